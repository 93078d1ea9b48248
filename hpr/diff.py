"""Diff: a feed-forward network that predicts the step from a negative activation to a positive one.

For decoder block ``l`` a network ``f_l: R^d -> R^d`` with the HPR angle network's hidden widths
(``angle_widths(d, 4)[:-1]`` = d, d/2, d/4, d/8, then a d-wide output) is trained with MSE to
map a negative answer-token activation ``a`` to ``a_pos - a`` (its aligned positive, the same
pairs HPR trains on: ``hpr.capture.Captured.pairs``) and a positive activation to 0. At inference
the block output becomes ``a + f_l(a)`` (computed in float32, returned in the model's dtype) at
every position, for the selected layers.

Layers: ``layers=[...]`` explicitly, or ``editors_dir=`` a saved HPR ``EditorSet`` whose
``selected`` layers are used (the paper's "same layers as HPR"); otherwise a network is trained
for every layer and the ``k`` (default 5, HPR's default) with the largest validation MSE
improvement ``1 - MSE(f) / MSE(0)`` are kept. All layers train together in one pass per epoch
(the per-layer networks are stacked and run with batched matrix products).
Training defaults follow HPR: AdamW lr 5e-4, cosine schedule with 5% warmup, 5 epochs, batch 16.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import io
from .architectures import fingerprint, hidden_size
from .editor import angle_widths, mlp
from .errors import EditorError, ParameterError
from .intervene import edit_block_outputs
from .methods import METHOD_FORMAT, check_fingerprint, read_method_config

WEIGHTS_FILE = "diff.safetensors"
DEFAULT_TOP_K = 5


def diff_widths(d: int, angle_layers: int = 4) -> list[int]:
    """Widths of the Diff network: the angle network's without its 1-wide output, then d."""
    return angle_widths(d, angle_layers)[:-1] + [d]


def diff_net(d: int, angle_layers: int = 4) -> nn.Sequential:
    """One layer's Diff network ``(..., d) -> (..., d)``."""
    return mlp(diff_widths(d, angle_layers))


class _AddDelta:
    """The edit ``a -> a + f(a)``, in float32, returned in ``a``'s dtype."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def __call__(self, a: Tensor) -> Tensor:
        first = next(self.net.parameters())
        if first.device != a.device:
            self.net.to(a.device)
        with torch.no_grad():
            af = a.float()
            return (af + self.net(af)).to(a.dtype)


class Diff:
    """Per-layer Diff networks for one model; ``layers`` are the edited blocks."""

    name = "diff"

    def __init__(
        self,
        nets: Mapping[int, nn.Module],
        model: Mapping[str, Any],
        layers: Sequence[int] | None = None,
        config: Mapping[str, Any] | None = None,
        angle_layers: int = 4,
    ) -> None:
        if not nets:
            raise EditorError("a Diff method needs at least one layer network")
        self.nets = {int(k): v.float().eval() for k, v in sorted(nets.items())}
        self.model = dict(model)
        self.layers = [int(i) for i in (layers if layers is not None else self.nets)]
        missing = [i for i in self.layers if i not in self.nets]
        if missing:
            raise EditorError(f"Diff layers {missing} have no trained network")
        self.config = dict(config or {})
        self.angle_layers = int(angle_layers)
        first = next(m for m in next(iter(self.nets.values())).modules() if isinstance(m, nn.Linear))
        self.hidden_size = int(first.in_features)

    def check_model(self, model: nn.Module) -> None:
        check_fingerprint(self.model, model, "diff")
        if hidden_size(model) != self.hidden_size:
            raise EditorError(f"Diff networks have d={self.hidden_size}, the model d={hidden_size(model)}")

    @contextmanager
    def apply(self, model: nn.Module, check: bool = True) -> Iterator[nn.Module]:
        """Replace block outputs ``a`` by ``a + f(a)`` at the edited layers inside the block."""
        if check:
            self.check_model(model)
        with edit_block_outputs(model, {i: _AddDelta(self.nets[i]) for i in self.layers}):
            yield model

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        tensors = {f"layer{i}.{k}": v for i, net in self.nets.items() for k, v in net.state_dict().items()}
        io.save_tensors(out / WEIGHTS_FILE, tensors, {"format": METHOD_FORMAT})
        cfg = {
            **{k: v for k, v in self.config.items() if k not in {"model", "layers", "trained_layers"}},
            "format": METHOD_FORMAT,
            "method": "diff",
            "hidden_size": self.hidden_size,
            "angle_layers": self.angle_layers,
            "trained_layers": sorted(self.nets),
            "layers": self.layers,
            "model": self.model,
        }
        io.write_json(out / "config.json", cfg)
        return out

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module | None = None) -> Diff:
        cfg = read_method_config(directory, "diff")
        path = Path(directory) / WEIGHTS_FILE
        try:
            t = load_file(str(path))
            d, al = int(cfg["hidden_size"]), int(cfg["angle_layers"])
            nets = {}
            for i in cfg["trained_layers"]:
                net = diff_net(d, al)
                prefix = f"layer{int(i)}."
                net.load_state_dict({k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)})
                nets[int(i)] = net
            out = cls(nets, cfg["model"], cfg["layers"], cfg, al)
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise EditorError(f"{path} or its config is missing or unreadable ({exc}); fit Diff again") from exc
        if model is not None:
            out.check_model(model)
        return out


class StackedMLP(nn.Module):
    """``L`` independent MLPs (same widths) run at once: ``(L, B, w0) -> (L, B, w_last)``."""

    def __init__(self, n: int, widths: Sequence[int], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            bound = 1 / math.sqrt(a)  # nn.Linear's default initialisation range
            self.weights.append(nn.Parameter((torch.rand(n, a, b, generator=g) * 2 - 1) * bound))
            self.biases.append(nn.Parameter((torch.rand(n, 1, b, generator=g) * 2 - 1) * bound))

    def forward(self, x: Tensor) -> Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i:
                x = nn.functional.gelu(x)
            x = torch.baddbmm(b, x, w)
        return x

    def unstack(self, j: int, d: int, angle_layers: int) -> nn.Sequential:
        """Network ``j`` as an ordinary ``diff_net``."""
        net = diff_net(d, angle_layers)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[j].T)
                lin.bias.copy_(b[j, 0])
        return net


def training_rows(neg: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """``(src, tgt)`` row indices: each pair (neg -> pos) and each paired positive (pos -> pos).

    The regression target of a row is ``x[tgt] - x[src]`` (0 for a positive).
    """
    positives = torch.unique(pos)
    return torch.cat([neg, positives]), torch.cat([pos, positives])


def cosine_warmup(total: int, warmup: float = 0.05) -> Any:
    """``LambdaLR`` factor: linear warmup over ``warmup * total`` steps, then cosine to 0."""
    w = max(1, int(round(warmup * total)))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))

    return factor


def train_stacked(
    data: Tensor, src: Tensor, tgt: Tensor, *, angle_layers: int = 4, epochs: int = 5, batch_size: int = 16,
    lr: float = 5e-4, weight_decay: float = 0.01, seed: int = 0, progress: bool = True,
) -> StackedMLP:
    """Train one Diff network per layer of ``data`` ``(L, N, d)`` on rows ``src -> tgt``."""
    if len(src) == 0:
        raise ParameterError("no (negative, positive) pairs to train Diff on; check the captured data")
    n_layers, _, d = data.shape
    net = StackedMLP(n_layers, diff_widths(d, angle_layers), seed)
    steps = epochs * math.ceil(len(src) / batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_warmup(steps))
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="Diff training", disable=not progress)
    for _ in range(epochs):
        perm = torch.randperm(len(src), generator=g)
        for s in range(0, len(perm), batch_size):
            b = perm[s : s + batch_size]
            x = data[:, src[b]].float()
            y = data[:, tgt[b]].float() - x
            loss = nn.functional.mse_loss(net(x), y, reduction="none").mean((1, 2)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return net


@torch.no_grad()
def val_improvement(net: StackedMLP, data: Tensor, src: Tensor, tgt: Tensor, chunk: int = 4096) -> Tensor:
    """Per layer ``1 - MSE(f) / MSE(0)`` on rows ``src -> tgt`` of ``data`` ``(L, N, d)``; ``(L,)``."""
    err = torch.zeros(data.shape[0], dtype=torch.float64)
    base = torch.zeros(data.shape[0], dtype=torch.float64)
    for s in range(0, len(src), chunk):
        x = data[:, src[s : s + chunk]].float()
        y = data[:, tgt[s : s + chunk]].float() - x
        err += ((net(x) - y) ** 2).sum((1, 2)).double()
        base += (y**2).sum((1, 2)).double()
    return (1 - err / base.clamp_min(1e-30)).float()


def _resolve_layers(model: nn.Module, layers: Sequence[int] | None, editors_dir: str | Path | None) -> list[int] | None:
    if layers is not None and editors_dir is not None:
        raise ParameterError("give Diff either layers or editors_dir, not both")
    if editors_dir is not None:
        from .editor import EditorSet

        return list(EditorSet.load(editors_dir, model).selected)
    return [int(i) for i in layers] if layers is not None else None


def fit_diff(
    *,
    model: nn.Module,
    tokenizer: Any,
    train: Sequence[Any],
    val: Sequence[Any],
    seed: int = 0,
    dataset: str = "truthfulqa",
    layers: Sequence[int] | None = None,
    editors_dir: str | Path | None = None,
    k: int = DEFAULT_TOP_K,
    angle_layers: int = 4,
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 5e-4,
    prompt_format: str | None = None,
    progress: bool = True,
) -> Diff:
    """Capture activations (``hpr.capture``, cached), train Diff networks, pick the layers."""
    from .capture import capture
    from .prompts import DEFAULT_FORMAT

    fmt = prompt_format or DEFAULT_FORMAT
    chosen = _resolve_layers(model, layers, editors_dir)
    kw: dict[str, Any] = {"layers": chosen, "prompt_format": fmt, "seed": seed, "progress": progress,
                          "dataset": dataset}
    cap = capture(model, tokenizer, train, split="train", **kw)
    neg, pos = cap.pairs()
    src, tgt = training_rows(neg, pos)
    net = train_stacked(cap.data, src, tgt, angle_layers=angle_layers, epochs=epochs,
                        batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    improvement: dict[int, float] = {}
    if val:
        vcap = capture(model, tokenizer, val, split="val", **kw)
        vneg, vpos = vcap.pairs()
        vsrc, vtgt = training_rows(vneg, vpos)
        if len(vsrc):
            imp = val_improvement(net, vcap.data, vsrc, vtgt)
            improvement = {layer: float(imp[j]) for j, layer in enumerate(cap.layers)}
    if chosen is None:
        if not improvement:
            raise ParameterError("Diff picks layers by validation MSE; the val split gave no pairs")
        if not 1 <= k <= len(cap.layers):
            raise ParameterError(f"Diff k must be in 1..{len(cap.layers)}, got {k}")
        chosen = sorted(cap.layers, key=lambda i: (-improvement[i], i))[:k]
    d = cap.hidden_size
    nets = {layer: net.unstack(j, d, angle_layers) for j, layer in enumerate(cap.layers)}
    config = {
        "dataset": dataset, "seed": seed, "k": len(chosen), "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "prompt_format": fmt, "n_train_rows": len(src), "n_pairs": len(neg),
        "val_mse_improvement": {str(i): v for i, v in improvement.items()},
        "editors_dir": str(editors_dir) if editors_dir is not None else None,
    }
    return Diff(nets, fingerprint(model), chosen, config, angle_layers)


__all__ = ["Diff", "fit_diff", "diff_net", "diff_widths", "StackedMLP", "train_stacked",
           "training_rows", "val_improvement", "DEFAULT_TOP_K"]
