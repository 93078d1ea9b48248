"""Diff's networks and their training (``hpr.methods.diff``): the two designs (the authors' Tanh
MLP, ``diff``; the MSE design, ``diff-mse``), every edited layer's network trained at once as one
stacked network ``(L, B, d) -> (L, B, d)``, the rows each design trains on, and the validation
measures that pick the layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hpr._nn import angle_widths, mlp
from hpr.errors import ParameterError

DESIGNS = ("authors", "mse")
#: Method name of each design.
METHOD_OF = {"authors": "diff", "mse": "diff-mse"}
#: Default depth (linear layers) per design.
DEFAULT_DEPTH = {"authors": 2, "mse": 4}
#: Training defaults per design (``fit_diff``'s ``training`` overrides them).
TRAINING: dict[str, dict[str, Any]] = {
    "authors": {"schedule": "linear", "weight_decay": 0.0, "grad_clip": 1.0},
    "mse": {"schedule": "cosine", "weight_decay": 0.01, "grad_clip": None},
}


def _check_design(design: str) -> str:
    if design not in DESIGNS:
        raise ParameterError(f"unknown Diff design {design!r}; use 'authors' (method diff) or 'mse' (diff-mse)")
    return design


def diff_widths(d: int, angle_layers: int = 4, design: str = "mse") -> list[int]:
    """Layer widths: ``mse``: the angle network's without its 1-wide output, then d; ``authors``:
    ``angle_layers`` (the depth) layers of width d."""
    if _check_design(design) == "authors":
        if angle_layers < 1:
            raise ParameterError(f"Diff depth must be at least 1, got {angle_layers}")
        return [d] * (angle_layers + 1)
    return angle_widths(d, angle_layers)[:-1] + [d]


def diff_net(d: int, angle_layers: int | None = None, design: str = "mse") -> nn.Sequential:
    """One layer's network ``(..., d) -> (..., d)``; ``authors``: Tanh after every linear layer."""
    depth = DEFAULT_DEPTH[_check_design(design)] if angle_layers is None else angle_layers
    widths = diff_widths(d, depth, design)
    if design == "mse":
        return mlp(widths)
    mods: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        mods += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*mods)


class StackedMLP(nn.Module):
    """``L`` independent Diff networks (same widths) run at once: ``(L, B, w0) -> (L, B, w_last)``."""

    def __init__(self, n: int, widths: Sequence[int], seed: int = 0, design: str = "mse") -> None:
        super().__init__()
        self.design = _check_design(design)
        g = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            bound = 1 / math.sqrt(a)  # nn.Linear's default initialisation range
            self.weights.append(nn.Parameter((torch.rand(n, a, b, generator=g) * 2 - 1) * bound))
            self.biases.append(nn.Parameter((torch.rand(n, 1, b, generator=g) * 2 - 1) * bound))

    def forward(self, x: Tensor) -> Tensor:
        tanh = self.design == "authors"
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i and not tanh:
                x = nn.functional.gelu(x)
            x = torch.baddbmm(b, x, w)
            if tanh:
                x = torch.tanh(x)
        return x

    def unstack(self, j: int, d: int, angle_layers: int) -> nn.Sequential:
        """Network ``j`` as an ordinary ``diff_net`` of the same design."""
        net = diff_net(d, angle_layers, self.design)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[j].T)
                lin.bias.copy_(b[j, 0])
        return net


def training_rows(neg: Tensor, pos: Tensor, design: str = "mse") -> tuple[Tensor, Tensor]:
    """``(src, tgt)`` row indices; the regression target of a row is ``x[tgt] - x[src]``.

    ``authors``: the pairs (neg -> pos) only; ``mse``: the pairs and each paired positive (pos -> pos,
    target 0).
    """
    if _check_design(design) == "authors":
        return neg, pos
    positives = torch.unique(pos)
    return torch.cat([neg, positives]), torch.cat([pos, positives])


def train_stacked(
    data: Tensor,
    src: Tensor,
    tgt: Tensor,
    *,
    angle_layers: int | None = None,
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 5e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    design: str = "authors",
    schedule: str = "linear",
    grad_clip: float | None = 1.0,
    lambda_p: float | None = None,
) -> StackedMLP:
    """Train one Diff network per layer of ``data`` ``(L, N, d)`` on rows ``src -> tgt``.

    Loss per layer: ``MSE(f(x[src]), x[tgt] - x[src])`` (mean over rows and coordinates), plus
    ``lambda_p * mean |f(x[tgt])|`` when set; summed over layers. ``schedule``: ``hpr.train.lr_schedule``
    with 5% warmup; ``grad_clip``: per-layer gradient norm bound (None: off).
    """
    from hpr._nn import adamw, clip_grad_norm_per_layer, lr_schedule

    if len(src) == 0:
        raise ParameterError("no (negative, positive) pairs to train Diff on; check the captured data")
    depth = DEFAULT_DEPTH[_check_design(design)] if angle_layers is None else angle_layers
    n_layers, _, d = data.shape
    net = StackedMLP(n_layers, diff_widths(d, depth, design), seed, design)
    steps = epochs * math.ceil(len(src) / batch_size)
    opt = adamw(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(schedule, steps, 0.05))
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="Diff training", disable=not progress)
    for _ in range(epochs):
        perm = torch.randperm(len(src), generator=g)
        for s in range(0, len(perm), batch_size):
            b = perm[s : s + batch_size]
            x = data[:, src[b]].float()
            xt = data[:, tgt[b]].float()
            loss = nn.functional.mse_loss(net(x), xt - x, reduction="none").mean((1, 2)).sum()
            if lambda_p is not None:
                loss = loss + lambda_p * net(xt).norm(dim=-1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                clip_grad_norm_per_layer(list(net.parameters()), grad_clip)
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


@torch.no_grad()
def val_cosine(net: StackedMLP, data: Tensor, src: Tensor, tgt: Tensor, chunk: int = 4096) -> Tensor:
    """Per layer mean cosine of ``f(x[src])`` and ``x[tgt] - x[src]``; ``(L,)``."""
    total = torch.zeros(data.shape[0], dtype=torch.float64)
    for s in range(0, len(src), chunk):
        x = data[:, src[s : s + chunk]].float()
        y = data[:, tgt[s : s + chunk]].float() - x
        total += nn.functional.cosine_similarity(net(x), y, dim=-1).sum(1).double()
    return (total / max(1, len(src))).float()


__all__ = [
    "DEFAULT_DEPTH",
    "DESIGNS",
    "METHOD_OF",
    "TRAINING",
    "diff_net",
    "diff_widths",
    "StackedMLP",
    "train_stacked",
    "training_rows",
    "val_improvement",
    "val_cosine",
]
