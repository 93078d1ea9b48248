"""The HPR editor of one layer: a linear probe and an angle network, and the edit that rotates the
activations the probe calls negative (``hpr.householder`` does the geometry). Sets of per-layer
editors, saved and applied to a model, are ``hpr.editor_set.EditorSet``."""

from __future__ import annotations

import math
import warnings
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hpr._nn import angle_widths, mlp
from hpr.errors import EditorError
from hpr.householder import edit_negatives

#: What the angle network reads: ``"raw"`` the activation itself (the paper and the authors' code);
#: ``"unit"`` the activation scaled to norm sqrt(d), ``sqrt(d) x / |x|`` (unit RMS per coordinate:
#: our variant ``hpr-unit``, for models whose residual norms saturate the raw network).
ANGLE_INPUTS = ("raw", "unit")


def angle_input_of(x: Tensor, angle_input: str) -> Tensor:
    """The angle network's input for activations ``x`` (..., d): ``x``, or ``sqrt(d) x / |x|``."""
    if angle_input == "raw":
        return x
    xf = x.float()
    scale = math.sqrt(x.shape[-1]) / torch.linalg.vector_norm(xf, dim=-1, keepdim=True).clamp_min(1e-30)
    return (xf * scale).to(x.dtype)


class HPR(nn.Module):
    """Householder pseudo-rotation editor for one layer of hidden size ``d``.

    ``forward(x)`` returns ``(p, theta)``: the probe's probability that ``x`` is positive and the
    predicted rotation angle in radians, both of shape ``x.shape[:-1]``. ``edit(x)`` rotates the
    activations the probe calls negative (p < 0.5) by ``theta`` towards their reflection; with
    ``use_angle=False`` (the -AnglePred ablation) it reflects them instead. ``angle_input``
    (``ANGLE_INPUTS``): what the angle network reads, ``"raw"`` (the paper's design) or ``"unit"``.
    """

    def __init__(
        self, hidden_size: int, angle_layers: int = 4, use_angle: bool = True, angle_input: str = "raw"
    ) -> None:
        super().__init__()
        if angle_input not in ANGLE_INPUTS:
            raise EditorError(f"angle_input must be one of {ANGLE_INPUTS}, got {angle_input!r}")
        self.hidden_size = hidden_size
        self.angle_layers = angle_layers
        self.use_angle = use_angle
        self.angle_input = angle_input
        self.probe = nn.Linear(hidden_size, 1, bias=False)
        self.angle = mlp(angle_widths(hidden_size, angle_layers))
        self._cache: tuple[Any, ...] | None = None
        self._cache_key: tuple[Any, ...] | None = None

    @property
    def normal(self) -> Tensor:
        """The probe weight ``w`` (d,), normal of the reflection hyperplane."""
        return self.probe.weight[0]

    def logits(self, x: Tensor) -> Tensor:
        return x.float() @ self.normal.float()

    def theta(self, x: Tensor) -> Tensor:
        """Predicted angle in radians, in (0, pi), shape ``x.shape[:-1]``."""
        dtype = next(self.angle.parameters()).dtype
        x = angle_input_of(x, self.angle_input)
        return math.pi * torch.sigmoid(self.angle(x.to(dtype)).squeeze(-1).float())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(self.logits(x)), self.theta(x)

    def _params(self) -> list[Tensor]:
        """The probe weight, then each angle layer's weight and bias, read straight from the
        modules' parameter dicts (this runs on every edit; ``parameters()`` costs far more)."""
        probe = cast(nn.Linear, self._modules["probe"])
        out = [probe._parameters["weight"]]
        for m in cast(nn.Sequential, self._modules["angle"])._modules.values():
            if isinstance(m, nn.Linear):
                out += (m._parameters["weight"], m._parameters["bias"])
        return cast(list[Tensor], out)

    def _cached(self) -> tuple[Any, ...]:
        """Arguments of ``edit_rows`` after ``x``: the unit normal ``w^`` (d,), the angle layers'
        weights and biases, and ``stacked``: whether the angle network is float32 with two or more
        layers. Then the first layer has ``w^`` stacked on top (``x @ W.T + b`` gives ``x . w^`` and
        the first hidden layer in one product) and the second a zero first column (it takes that
        whole output and ignores ``x . w^``). Not stacked when the angle network reads ``"unit"``
        input (it reads another vector than the normal's dot product).
        Rebuilt when a parameter changes in place (its version), is replaced, moved or cast (its
        storage); changes made through ``.data`` are not seen."""
        params = self._params()
        key = tuple((t._version, t.data_ptr()) for t in params)
        if self._cache is None or self._cache_key != key:
            w = params[0][0].detach().float()
            wh = w / w.norm().clamp_min(torch.finfo(torch.float32).tiny)
            ws = [t.detach() for t in params[1::2]]
            bs = [t.detach() for t in params[2::2]]
            stacked = ws[0].dtype == torch.float32 and len(ws) > 1 and self.angle_input == "raw"
            if stacked:
                ws[0], bs[0] = torch.cat([wh[None], ws[0]]), torch.cat([wh.new_zeros(1), bs[0]])
                ws[1] = torch.cat([ws[1].new_zeros(ws[1].shape[0], 1), ws[1]], dim=1)
            self._cache = (wh, ws, bs, stacked)
            self._cache_key = key
        return self._cache

    def edit(self, x: Tensor, compiled: bool = False) -> Tensor:
        """Edited activations, same shape and dtype as ``x``; positives are returned unchanged.

        Equals ``where(p < 0.5, pseudo_rotate(x, w, theta) or reflect(x, w), x)``, computed by
        ``edit_rows`` (geometry in float32, the angle network in its own dtype, about 20 tensor
        operations: at decode each edit sees a few rows, and per-operation costs dominate).
        ``compiled=True`` runs it through ``torch.compile`` (same results; eager if that fails).
        """
        return edit_with(x, self._cached(), self.use_angle, compiled, self.angle_input)

    def __call__(self, x: Tensor) -> Any:  # typed for mypy; nn.Module dispatches to forward
        return super().__call__(x)


def edit_with(
    x: Tensor, cached: tuple[Any, ...], use_angle: bool = True, compiled: bool = False, angle_input: str = "raw"
) -> Tensor:
    """``HPR.edit`` given the editor's ``_cached()`` arguments (the hooks read those once per block)."""
    wh, ws, bs, stacked = cached
    if x.shape[-1] != wh.shape[0]:
        raise EditorError(
            f"activations of size {x.shape[-1]} given to an editor of hidden size "
            f"{wh.shape[0]}; use editors trained for this model and layer"
        )
    grad = torch.is_grad_enabled()
    onednn = torch._C._get_mkldnn_enabled()
    # For contiguous float32 CPU input ATen runs GELU through oneDNN, whose per-call overhead far
    # exceeds ATen's own kernel on the few rows of a decode step (same values to float32 rounding;
    # benchmarks/profile_edit.py times the whole edit inside the model). The flag is
    # process-wide: it is restored before the model goes on, but another thread running torch
    # during an edit would skip oneDNN for that moment too.
    torch._C._set_mkldnn_enabled(False)
    torch._C._set_grad_enabled(False)
    try:
        if not use_angle:
            xf = x.float()
            out = edit_negatives(xf, wh, (xf @ wh).unsqueeze(-1), None)
        elif angle_input != "raw":
            xf = x.float()
            h = F.linear(angle_input_of(xf, angle_input).to(ws[0].dtype), ws[0], bs[0])
            for w, b in zip(ws[1:], bs[1:], strict=True):
                h = F.linear(F.gelu(h), w, b)
            out = edit_negatives(xf, wh, (xf @ wh).unsqueeze(-1), torch.sigmoid(h.float()).mul_(math.pi))
        else:
            out = (compiled_edit_rows() if compiled else edit_rows)(x, wh, ws, bs, stacked)
    finally:
        torch._C._set_mkldnn_enabled(onednn)
        torch._C._set_grad_enabled(grad)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def edit_rows(x: Tensor, wh: Tensor, ws: list[Tensor], bs: list[Tensor], stacked: bool) -> Tensor:
    """The HPR edit of activations ``x`` (..., d) in float32: ``x . w^``, the angle MLP (Linear, GELU,
    ..., Linear; weights ``ws``, biases ``bs``, as ``HPR._cached`` lays them out: ``stacked`` puts
    ``x . w^`` in column 0 of the first layer's output), ``theta = pi sigmoid(.)`` (..., 1) in
    radians, then ``hpr.householder.edit_negatives``."""
    xf = x.float()
    if stacked:
        h = F.linear(xf, ws[0], bs[0])  # (..., 1 + width): x . w^, then the first hidden layer
        dot = h[..., :1]
    else:
        dot, h = (xf @ wh).unsqueeze(-1), F.linear(x.to(ws[0].dtype), ws[0], bs[0])
    for w, b in zip(ws[1:], bs[1:], strict=True):
        h = F.linear(F.gelu(h), w, b)
    theta = torch.sigmoid(h.float()).mul_(math.pi)
    return edit_negatives(xf, wh, dot, theta)


_COMPILED: dict[str, Any] = {}


def compiled_edit_rows() -> Any:
    """``edit_rows`` through ``torch.compile`` (one graph per shape and dtype, shared by all
    editors), falling back to eager ``edit_rows`` with a warning if compilation fails."""
    if "fn" not in _COMPILED:
        compiled = torch.compile(edit_rows, dynamic=False)

        def run(*args: Any) -> Tensor:
            if _COMPILED.get("failed"):
                return edit_rows(*args)
            try:
                return compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: stay correct, go eager
                warnings.warn(
                    f"torch.compile of the HPR edit failed ({type(exc).__name__}: {exc}); using the eager path",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _COMPILED["failed"] = True
                return edit_rows(*args)

        _COMPILED["fn"] = run
    return _COMPILED["fn"]


__all__ = ["ANGLE_INPUTS", "HPR", "angle_input_of", "compiled_edit_rows", "edit_rows", "edit_with"]
