"""The HPR editor (probe + angle network) and sets of per-layer editors saved as safetensors."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from . import io
from .architectures import fingerprint as model_fingerprint
from .architectures import same_model
from .errors import EditorError
from .intervene import edit_block_outputs
from .kernels import edit_negatives

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "hpr-editor-set/1"
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


def angle_widths(hidden_size: int, angle_layers: int) -> list[int]:
    """Widths of the angle MLP: d, d/2, ..., d/2^(L-1), 1 (``angle_layers`` = L linear layers)."""
    if angle_layers < 1:
        raise EditorError(f"angle_layers must be at least 1, got {angle_layers}")
    return [max(1, hidden_size // 2**i) for i in range(angle_layers)] + [1]


def mlp(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers with GELU between them (none after the last)."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        if i:
            mods.append(nn.GELU())
        mods.append(nn.Linear(a, b))
    return nn.Sequential(*mods)


class HPR(nn.Module):
    """Householder pseudo-rotation editor for one layer of hidden size ``d``.

    ``forward(x)`` returns ``(p, theta)``: the probe's probability that ``x`` is positive and the
    predicted rotation angle in radians, both of shape ``x.shape[:-1]``. ``edit(x)`` rotates the
    activations the probe calls negative (p < 0.5) by ``theta`` towards their reflection; with
    ``use_angle=False`` (the -AnglePred ablation) it reflects them instead. ``angle_input``
    (``ANGLE_INPUTS``): what the angle network reads, ``"raw"`` (the paper's design) or ``"unit"``.
    """

    def __init__(self, hidden_size: int, angle_layers: int = 4, use_angle: bool = True,
                 angle_input: str = "raw") -> None:
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


def edit_with(x: Tensor, cached: tuple[Any, ...], use_angle: bool = True, compiled: bool = False,
              angle_input: str = "raw") -> Tensor:
    """``HPR.edit`` given the editor's ``_cached()`` arguments (the hooks read those once per block)."""
    wh, ws, bs, stacked = cached
    if x.shape[-1] != wh.shape[0]:
        raise EditorError(f"activations of size {x.shape[-1]} given to an editor of hidden size "
                          f"{wh.shape[0]}; use editors trained for this model and layer")
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
    radians, then ``hpr.kernels.edit_negatives``."""
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
                warnings.warn(f"torch.compile of the HPR edit failed ({type(exc).__name__}: {exc}); "
                              "using the eager path", RuntimeWarning, stacklevel=2)
                _COMPILED["failed"] = True
                return edit_rows(*args)

        _COMPILED["fn"] = run
    return _COMPILED["fn"]


class EditorSet:
    """Per-layer HPR editors for one model, the selected layers, and their provenance.

    ``editors`` holds every trained layer; ``selected`` lists the edited ones, best first
    (top-k by validation probe accuracy). ``config`` records hidden size, per-layer validation
    accuracy, training parameters and dataset; ``model`` is the model fingerprint.
    """

    def __init__(
        self,
        editors: Mapping[int, HPR],
        model: Mapping[str, Any],
        selected: Sequence[int] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if not editors:
            raise EditorError("an editor set needs at least one layer")
        self.editors = {int(k): v for k, v in sorted(editors.items())}
        self.model = dict(model)
        self.selected = [int(i) for i in (selected if selected is not None else self.editors)]
        missing = [i for i in self.selected if i not in self.editors]
        if missing:
            raise EditorError(f"selected layers {missing} have no trained editor")
        self.config = dict(config or {})
        first = next(iter(self.editors.values()))
        self.hidden_size = first.hidden_size

    @property
    def val_accuracy(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in self.config.get("val_accuracy", {}).items()}

    def top(self, k: int, use_angle: bool | None = None) -> EditorSet:
        """The same editors with the ``k`` best layers selected (by validation accuracy)."""
        acc = self.val_accuracy
        order = sorted(self.editors, key=lambda i: (-acc.get(i, 0.0), i))
        out = EditorSet(self.editors, self.model, order[:k], {**self.config, "k": k})
        if use_angle is not None:
            out = out.with_angle(use_angle)
        return out

    def with_angle(self, use_angle: bool) -> EditorSet:
        """A copy whose editors use (or skip, for -AnglePred) the angle network."""
        eds = {}
        for i, e in self.editors.items():
            c = HPR(e.hidden_size, e.angle_layers, use_angle, e.angle_input)
            c.load_state_dict(e.state_dict())
            eds[i] = c.to(next(e.parameters()).device)
        return EditorSet(eds, self.model, self.selected, {**self.config, "use_angle": use_angle})

    def check_model(self, model: nn.Module, name: str | None = None) -> None:
        """Refuse a model whose fingerprint differs from the one the editors were trained on."""
        fp = model_fingerprint(model, name if name is not None else self.model.get("name"))
        if fp["hidden_size"] != self.hidden_size:
            raise EditorError(
                f"hidden-size mismatch: the editors have d={self.hidden_size}, the model "
                f"{fp['name']!r} has d={fp['hidden_size']}; train editors for this model"
            )
        if not same_model(fp, self.model):
            raise EditorError(
                f"these editors were trained on {self.model} but the model is {fp}; "
                "train editors for this model (hpr train --model ...)"
            )

    @contextmanager
    def apply(self, model: nn.Module, check: bool = True, compiled: bool = False) -> Iterator[nn.Module]:
        """Edit the selected layers of ``model`` inside the block; hooks removed on exit. The editors'
        weights are read at the first edit: changes to them inside the block take effect at the next.

        ``compiled=True`` fuses each edit with ``torch.compile`` (worth it for long ``generate()``
        runs on a GPU, where the eager edit's kernel launches cost more than its arithmetic; the
        first call per shape compiles for seconds to a minute). Results are the same.
        """
        if check:
            self.check_model(model)
        edits = {i: _EditCall(self.editors[i], compiled) for i in self.selected}
        with torch.no_grad(), edit_block_outputs(model, edits):
            yield model

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically)."""
        out = Path(directory)
        tensors: dict[str, Tensor] = {}
        layers: dict[str, dict[str, Any]] = {}
        for i, e in self.editors.items():
            for k, v in e.state_dict().items():
                tensors[f"layer{i}.{k}"] = v
            layers[str(i)] = {"angle_layers": e.angle_layers, "use_angle": e.use_angle}
            if e.angle_input != "raw":  # absent: "raw" (editor sets saved before the variant existed)
                layers[str(i)]["angle_input"] = e.angle_input
        io.save_tensors(out / WEIGHTS_FILE, tensors, {"format": FORMAT})
        cfg = {
            "format": FORMAT,
            "hidden_size": self.hidden_size,
            "layers": sorted(self.editors),
            "selected": self.selected,
            "editors": layers,
            "model": self.model,
            **{k: v for k, v in self.config.items() if k not in {"format", "editors", "model"}},
        }
        io.write_json(out / CONFIG_FILE, cfg)
        return out

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module | None = None) -> EditorSet:
        """Load a saved set; with ``model``, refuse it unless it matches the fingerprint."""
        cfg = read_config(directory)
        path = Path(directory) / WEIGHTS_FILE
        if not path.is_file():
            raise EditorError(f"{path} is missing; re-save the editors or train them again")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise EditorError(f"{path} is not a readable safetensors file ({exc}); retrain") from exc
        d = int(cfg["hidden_size"])
        editors = {}
        for key, spec in cfg["editors"].items():
            e = HPR(d, int(spec["angle_layers"]), bool(spec["use_angle"]), str(spec.get("angle_input", "raw")))
            prefix = f"layer{key}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                e.load_state_dict(state)
            except RuntimeError as exc:
                raise EditorError(
                    f"weights of layer {key} in {path} do not fit an editor of hidden size {d}: {exc}; the weights "
                    "and config.json come from different saves: re-save the editors or retrain them (hpr train)"
                ) from exc
            editors[int(key)] = e
        extra = {k: v for k, v in cfg.items() if k not in {"editors", "model", "selected"}}
        out = cls(editors, cfg["model"], cfg["selected"], extra)
        if model is not None:
            out.check_model(model)
        return out


class _EditCall:
    """A picklable callable ``x -> editor.edit(x)`` for the hooks. It reads the editor's weights
    (``HPR._cached``) at its first call and again only when ``x`` is on another device (then it
    moves the editor there): weight changes made inside an ``apply()`` block apply from the next."""

    def __init__(self, editor: HPR, compiled: bool = False) -> None:
        self.editor = editor
        self.compiled = compiled
        self.cached: tuple[Any, ...] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        cached = self.cached
        if cached is None or cached[0].device != x.device:
            if self.editor.probe.weight.device != x.device:
                self.editor.to(x.device)
            cached = self.cached = self.editor._cached()
        return edit_with(x, cached, self.editor.use_angle, self.compiled, self.editor.angle_input)


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and validate an editor directory's ``config.json``; ``EditorError`` if unusable."""
    d = Path(directory)
    if not d.is_dir():
        raise EditorError(f"editor directory {d} does not exist; train editors with `hpr train`")
    path = d / CONFIG_FILE
    if not path.is_file():
        raise EditorError(f"{path} is missing; {d} is not a saved editor set: pass the folder that "
                          "`hpr train --out` (or EditorSet.save) wrote")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EditorError(f"{path} is not valid JSON ({exc}); re-save or retrain the editors") from exc
    if not isinstance(cfg, dict):
        raise EditorError(f"{path} must hold a JSON object; re-save or retrain the editors")
    problems = []
    if not isinstance(cfg.get("hidden_size"), int) or cfg["hidden_size"] < 1:
        problems.append("hidden_size must be a positive integer")
    eds = cfg.get("editors")
    if not isinstance(eds, dict) or not eds:
        problems.append("editors must be a non-empty object")
    else:
        for key, spec in eds.items():
            if not str(key).lstrip("-").isdigit() or int(key) < 0:
                problems.append(f"editor key {key!r} is not a layer index")
            elif not isinstance(spec, dict) or not isinstance(spec.get("angle_layers"), int) \
                    or not 1 <= spec["angle_layers"] <= 16 or not isinstance(spec.get("use_angle"), bool):
                problems.append(f"editor {key} needs angle_layers (1..16) and use_angle (bool)")
            elif spec.get("angle_input", "raw") not in ANGLE_INPUTS:
                problems.append(f"editor {key}: angle_input must be one of {ANGLE_INPUTS}")
    if not isinstance(cfg.get("model"), dict):
        problems.append("model (the fingerprint) must be an object")
    sel = cfg.get("selected")
    if not isinstance(sel, list) or not sel or not all(isinstance(i, int) for i in sel):
        problems.append("selected must be a non-empty list of layer indices")
    elif isinstance(eds, dict) and any(str(i) not in eds for i in sel):
        problems.append("selected names a layer without an editor")
    if problems:
        raise EditorError(f"{path} is not a valid editor config: " + "; ".join(problems)
                          + "; restore the file EditorSet.save wrote, or retrain the editors (hpr train)")
    return cfg


__all__ = ["ANGLE_INPUTS", "HPR", "EditorSet", "angle_input_of", "angle_widths", "mlp", "read_config"]
