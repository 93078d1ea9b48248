"""Householder reflection and pseudo-rotation, O(d) per vector.

Shapes: ``x`` is ``(..., d)``; the hyperplane normal ``w`` is ``(d,)``; angles are radians
with shape ``(...)``. Everything is computed in float32 and returned in the input dtype.

The rotation is done in an orthonormal basis of span{a, w} instead of the law-of-sines form
``sin(t)/sin(g) * Ha + sin(g - t)/sin(g) * a`` of the paper, which cancels catastrophically in
float32 when the angle ``g`` between ``a`` and ``Ha`` is small. Both give the same vector.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Below this value of sin(angle(a, Ha)) the rotation plane is taken as undefined.
PLANE_TOL = 1e-6

#: The same bound on ``|cot(angle(x, w))|``: ``2 t / (1 + t^2) > PLANE_TOL`` for ``TAU_MIN < t < 1/TAU_MIN``.
TAU_MIN = PLANE_TOL / (1.0 + (1.0 - PLANE_TOL**2) ** 0.5)


def _check(x: Tensor, w: Tensor) -> None:
    if w.dim() != 1:
        raise ValueError(f"w must have shape (d,), got {tuple(w.shape)}")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"last dimension of x ({x.shape[-1]}) does not match the size of w ({w.shape[0]})")


def _unit(w: Tensor) -> Tensor:
    return w / w.norm().clamp_min(torch.finfo(torch.float32).tiny)


def reflect(x: Tensor, w: Tensor) -> Tensor:
    """Householder reflection of every vector in ``x`` about the hyperplane with normal ``w``.

    ``H x = x - 2 (w . x / w . w) w``; norm-preserving and an involution.
    """
    _check(x, w)
    xf = x.float()
    wh = _unit(w.float().to(x.device))
    out = xf - 2.0 * (xf @ wh).unsqueeze(-1) * wh
    return out.to(x.dtype)


def angle_between(a: Tensor, b: Tensor) -> Tensor:
    """Angle between vectors ``a`` and ``b`` (``(..., d)``), radians in [0, pi], shape ``(...)``.

    Uses ``2 atan2(|a^ - b^|, |a^ + b^|)``, accurate for nearly parallel vectors. A zero vector
    gives 0.
    """
    af, bf = a.float(), b.float()
    tiny = torch.finfo(torch.float32).tiny
    ah = af / af.norm(dim=-1, keepdim=True).clamp_min(tiny)
    bh = bf / bf.norm(dim=-1, keepdim=True).clamp_min(tiny)
    return 2.0 * torch.atan2((ah - bh).norm(dim=-1), (ah + bh).norm(dim=-1))


def rotation_geometry(x: Tensor, wh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Quantities shared by the edit for float32 ``x`` (..., d) and unit normal ``wh`` (d,).

    Returns ``(c, r, v, s)``: ``c = wh . x^`` (cosine to the normal), ``r = |x|``,
    ``v = wh - c x^`` (the normal's part orthogonal to ``x``) and ``s = |v|``.
    ``sin(angle(x, Hx)) = 2 |c| s``.
    """
    r = x.norm(dim=-1, keepdim=True)
    u = x / r.clamp_min(torch.finfo(torch.float32).tiny)
    c = u @ wh
    v = wh - c.unsqueeze(-1) * u
    s = v.norm(dim=-1)
    return c, r.squeeze(-1), v, s


def pseudo_rotate(x: Tensor, w: Tensor, theta: Tensor | float) -> Tensor:
    """Rotate each ``x`` by ``theta`` radians towards its reflection ``H x``.

    The rotation happens in the plane spanned by ``x`` and ``H x``; the result keeps ``|x|`` and
    makes angle ``theta`` with ``x`` (``theta`` = angle(x, Hx) lands exactly on ``H x``). Where the
    plane is undefined (``x`` on the hyperplane, parallel to ``w``, or zero) the result is ``H x``.
    ``theta`` broadcasts against ``x.shape[:-1]``.
    """
    _check(x, w)
    xf = x.float()
    wh = _unit(w.float().to(x.device))
    th = torch.as_tensor(theta, dtype=torch.float32, device=x.device)
    c, r, v, s = rotation_geometry(xf, wh)
    defined = (2.0 * c.abs() * s) > PLANE_TOL
    # Unit vector in the plane, orthogonal to x, on the side of Hx: -sign(c) v / s.
    # Where defined, s > PLANE_TOL / 2 (as |c| <= 1), so the clamp only guards the other branch.
    scale = torch.where(defined, -torch.sign(c) * torch.sin(th) * r / s.clamp_min(PLANE_TOL / 2), 0.0)
    rotated = torch.cos(th).unsqueeze(-1) * xf + scale.unsqueeze(-1) * v
    reflected = xf - 2.0 * (xf @ wh).unsqueeze(-1) * wh
    out = torch.where(defined.unsqueeze(-1), rotated, reflected)
    return out.to(x.dtype)


def edit_negatives(x: Tensor, wh: Tensor, dot: Tensor, theta: Tensor | None) -> Tensor:
    """The HPR edit of float32 activations ``x`` (..., d), in few tensor operations (the decode path).

    ``wh`` is the unit normal (d,), ``dot = x @ wh`` with a trailing 1 (..., 1) and ``theta`` radians
    of the same shape, or None to reflect. Rows with ``dot < 0`` (the probe's negatives) are rotated by
    ``theta`` towards their reflection; the other rows come back bitwise. Equals
    ``pseudo_rotate``/``reflect`` on the negatives to float32 rounding (``tests/test_fast_paths.py``,
    which also checks it against a second fast form kept as a test reference).

    With ``b = |x - dot wh|`` (= ``|x| sin(phi)``, phi = angle(x, w)) and ``tau = dot / b``
    (= ``cot(phi)``), the rotation of a negative is ``(cos t - tau sin t) x + sin t (b + tau dot) wh``.
    Its plane is defined where ``sin(angle(x, Hx)) = 2 |tau| / (1 + tau^2) > PLANE_TOL``, i.e. for
    ``-1/TAU_MIN < tau < -TAU_MIN``; elsewhere negatives are reflected (and positives kept, as
    ``tau >= 0`` there). At decode each edit sees a few rows and every tensor operation costs more
    than its arithmetic, so this is 17 operations, few distinct ones, with no branching on data.
    """
    if theta is None:
        return torch.addcmul(x, dot.clamp(max=0.0), wh, value=-2.0)
    buf = torch.addcmul(x, dot, wh, value=-1.0)  # x minus its component along wh
    b = torch.linalg.vector_norm(buf, dim=-1, keepdim=True)
    tau = dot / b  # +-inf or nan only where the plane is undefined; torch.where drops those
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)
    alpha = torch.addcmul(cos_t, tau, sin_t, value=-1.0)
    beta = torch.addcmul(b, tau, dot).mul_(sin_t)
    edit = (tau < -TAU_MIN) & (tau > -1.0 / TAU_MIN)
    alpha = torch.where(edit, alpha, 1.0)
    beta = torch.where(edit, beta, dot.clamp(max=0.0).mul_(-2.0))
    out = torch.mul(x, alpha, out=buf)
    return out.addcmul_(beta, wh)


__all__ = [
    "PLANE_TOL",
    "TAU_MIN",
    "angle_between",
    "edit_negatives",
    "pseudo_rotate",
    "reflect",
    "rotation_geometry",
]
