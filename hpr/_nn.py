"""Small neural-network helpers shared by HPR's and the baselines' training: the MLP builder and
the angle network's widths, the learning-rate schedules, per-layer gradient clipping of stacked
parameters, and AdamW."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hpr.errors import EditorError, ParameterError

SCHEDULES = ("linear", "cosine")


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


def lr_schedule(schedule: str, total: int, warmup: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor of step ``step`` (0-based) for ``LambdaLR``; ``total`` steps in all.

    ``"linear"``: ``transformers.get_linear_schedule_with_warmup`` (what the authors' Trainer
    uses): ``ceil(warmup * total)`` warmup steps with factor ``step / warm`` (0 on the first
    step), then a linear decay to 0 at ``total``. ``"cosine"``: ``round(warmup * total)`` (at
    least 1) warmup steps with factor ``(step + 1) / warm``, then a half cosine to 0.
    Used by HPR (``train``), Diff and LoRA.
    """
    if schedule == "linear":
        warm = math.ceil(warmup * total)

        def linear(step: int) -> float:
            if step < warm:
                return step / max(1, warm)
            return max(0.0, (total - step) / max(1, total - warm))

        return linear
    if schedule != "cosine":
        raise ParameterError(f"unknown learning-rate schedule {schedule!r}; use one of {SCHEDULES}")
    cwarm = max(1, int(round(warmup * total))) if warmup > 0 else 0

    def cosine(step: int) -> float:
        if step < cwarm:
            return (step + 1) / cwarm
        progress = (step - cwarm) / max(1, total - cwarm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return cosine


@torch.no_grad()
def clip_grad_norm_per_layer(params: Sequence[Tensor], max_norm: float, eps: float = 1e-6) -> Tensor:
    """Clip the gradients of stacked parameters (leading dimension L) layer by layer, in place.

    Layer ``j``'s gradient (``p.grad[j]`` of every ``p``) is scaled by ``min(1, max_norm / (n_j + eps))``
    where ``n_j`` is its L2 norm: ``torch.nn.utils.clip_grad_norm_`` applied to each layer alone.
    Returns the norms before clipping, ``(L,)``.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    n = grads[0].shape[0]
    norms = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.reshape(n, -1), dim=1, dtype=torch.float32) for g in grads]), dim=0
    )
    coef = (max_norm / (norms + eps)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).view(n, *([1] * (g.dim() - 1))))
    return norms


def adamw(params: Any, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused where the build supports it (several times faster on CPU, the same update up to
    float rounding); used by HPR and Diff training."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


__all__ = ["SCHEDULES", "adamw", "angle_widths", "clip_grad_norm_per_layer", "lr_schedule", "mlp"]
