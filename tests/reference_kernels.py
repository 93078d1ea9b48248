"""A second, independent fast form of the HPR edit, kept as a test reference: it computes every
output as ``alpha x + beta w^`` in a few sweeps (the library's ``hpr.householder.edit_negatives``
takes ``x . w^`` and the angle from the editor instead). The tests compare the two, and both with
the plain kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from hpr.householder import PLANE_TOL, _check, _unit


def fused_edit(x: Tensor, w: Tensor, theta: Tensor | float | None, negative: Tensor | bool) -> Tensor:
    """``where(negative, pseudo_rotate(x, w, theta), x)`` in a few sweeps over ``x``, no (d, d) matrix.

    ``theta=None`` reflects instead (``reflect(x, w)``, the -AnglePred ablation). ``theta`` and
    ``negative`` broadcast against ``x.shape[:-1]``. Same result as the plain kernels up to float32
    rounding (``tests/test_fast_paths.py``): every output is ``alpha x + beta w^`` with per-vector
    scalars (the rotation stays in span{x, w}), so only two (n, d) buffers are touched: ``x``'s
    part orthogonal to ``w`` (whose norm gives ``sin`` of the angle to the normal accurately, also
    near parallel) and the output, written into the same buffer. Unedited vectors are
    ``1 * x + 0 * w^``, bitwise ``x``. No data-dependent branching (CUDA-graph friendly).
    """
    _check(x, w)
    shape, d = x.shape, x.shape[-1]
    xf = x.float().reshape(-1, d)
    wh = _unit(w.float().to(x.device))
    lead = shape[:-1]
    neg = torch.broadcast_to(torch.as_tensor(negative, device=x.device), lead).reshape(-1)
    dot = xf @ wh  # (n,) = c r
    if theta is None:
        alpha = torch.ones_like(dot)
        beta = -2.0 * dot
    else:
        tiny = torch.finfo(torch.float32).tiny
        th = torch.broadcast_to(torch.as_tensor(theta, dtype=torch.float32, device=x.device), lead)
        th = th.reshape(-1)
        r = xf.norm(dim=-1)
        buf = torch.addr(xf, dot, wh, alpha=-1.0)  # x - (x . w^) w^, the part orthogonal to w
        c = dot / r.clamp_min(tiny)
        s = buf.norm(dim=-1) / r.clamp_min(tiny)  # |w^ - c x^| = sin(angle(x, w))
        defined = (2.0 * c.abs() * s) > PLANE_TOL
        s_safe = s.clamp_min(PLANE_TOL / 2)  # equals s wherever ``defined`` (|c| <= 1)
        sin_t = torch.sin(th)
        alpha = torch.where(defined, torch.cos(th) + c.abs() * sin_t / s_safe, 1.0)
        beta = torch.where(defined, -torch.sign(c) * sin_t * r / s_safe, -2.0 * dot)
    alpha = torch.where(neg, alpha, 1.0)
    beta = torch.where(neg, beta, 0.0)
    out = torch.mul(xf, alpha.unsqueeze(-1), out=buf) if theta is not None else xf * alpha.unsqueeze(-1)
    out.addr_(beta, wh)
    return out.reshape(shape).to(x.dtype)
