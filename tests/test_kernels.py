"""Property tests of the O(d) Householder kernels against dense float64 formulations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpr.householder import PLANE_TOL, angle_between, pseudo_rotate, reflect

DIMS = st.sampled_from([2, 3, 5, 16, 64, 257, 1024, 4096])
SEEDS = st.integers(0, 2**31 - 1)
THETAS = st.floats(0.0, math.pi, allow_nan=False)
SCALES = st.sampled_from([1e-3, 1.0, 37.0, 1e3])


def _draw(seed: int, d: int, n: int = 4, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * scale
    w = torch.randn(d, generator=g)
    return x, w


def _tilted(x: torch.Tensor, w: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """``x`` with its component along ``w`` set to ``ratio`` times the rest: sin(gamma) ~ 0.8."""
    wh = w / w.norm()
    perp = x - (x @ wh).unsqueeze(-1) * wh
    return perp + ratio * perp.norm(dim=-1, keepdim=True) * wh


def dense_reflect(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``H x`` with the dense d x d matrix ``I - 2 w w^T / w^T w`` in float64."""
    w64 = w.double()
    H = torch.eye(len(w), dtype=torch.float64) - 2.0 * torch.outer(w64, w64) / (w64 @ w64)
    return x.double() @ H.T


def law_of_sines(
    x: torch.Tensor,
    w: torch.Tensor,
    theta: torch.Tensor | float,
    dtype: torch.dtype = torch.float64,
    dense: bool = True,
) -> torch.Tensor:
    """The paper's formula ``sin(t)/sin(g) Hx + sin(g - t)/sin(g) x`` (dense H, or H x in O(d))."""
    xd, wd = x.to(dtype), w.to(dtype)
    if dense:
        H = torch.eye(len(w), dtype=dtype) - 2.0 * torch.outer(wd, wd) / (wd @ wd)
        hx = xd @ H.T
    else:
        hx = xd - 2.0 * ((xd @ wd) / (wd @ wd)).unsqueeze(-1) * wd
    cos_g = (xd * hx).sum(-1) / (xd.norm(dim=-1) * hx.norm(dim=-1))
    g = torch.arccos(cos_g.clamp(-1, 1))
    t = torch.as_tensor(theta, dtype=dtype)
    return (torch.sin(t) / torch.sin(g)).unsqueeze(-1) * hx + (torch.sin(g - t) / torch.sin(g)).unsqueeze(-1) * xd


def _plane_sin(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    c = (x.double() @ w.double()) / (x.double().norm(dim=-1) * w.double().norm())
    return 2 * c.abs() * (1 - c**2).clamp_min(0).sqrt()


@settings(max_examples=40, deadline=None)
@given(SEEDS, DIMS, SCALES)
def test_reflect_norm_involution_dense(seed: int, d: int, scale: float) -> None:
    x, w = _draw(seed, d, scale=scale)
    hx = reflect(x, w)
    assert hx.dtype == x.dtype and hx.shape == x.shape
    torch.testing.assert_close(hx.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=0)
    torch.testing.assert_close(reflect(hx, w), x, rtol=1e-5, atol=1e-5 * scale)
    if d <= 257:
        torch.testing.assert_close(hx.double(), dense_reflect(x, w), rtol=1e-5, atol=1e-5 * scale)


@settings(max_examples=60, deadline=None)
@given(SEEDS, DIMS, THETAS, SCALES)
def test_pseudo_rotate_norm_and_angle(seed: int, d: int, theta: float, scale: float) -> None:
    x, w = _draw(seed, d, scale=scale)
    x = _tilted(x, w)  # sin(gamma) well above the plane tolerance at every d
    assert bool((_plane_sin(x, w) > 1e3 * PLANE_TOL).all())
    out = pseudo_rotate(x, w, theta)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=0)
    torch.testing.assert_close(angle_between(x, out), torch.full((len(x),), theta), rtol=0, atol=2e-4)
    # The result lies in span{x, w}.
    basis, _ = torch.linalg.qr(torch.stack([x[0].double(), w.double()], dim=1))
    resid = out[0].double() - basis @ (basis.T @ out[0].double())
    assert float(resid.norm()) <= 1e-5 * float(x[0].norm())


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.sampled_from([2, 3, 8, 32, 128]), THETAS)
def test_pseudo_rotate_matches_dense_law_of_sines(seed: int, d: int, theta: float) -> None:
    x, w = _draw(seed, d)
    x = _tilted(x, w)
    want = law_of_sines(x, w, theta)
    torch.testing.assert_close(pseudo_rotate(x, w, theta).double(), want, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(SEEDS, DIMS)
def test_rotating_by_gamma_lands_on_reflection(seed: int, d: int) -> None:
    x, w = _draw(seed, d)
    x = _tilted(x, w)
    gamma = angle_between(x, reflect(x, w))
    torch.testing.assert_close(pseudo_rotate(x, w, gamma), reflect(x, w), rtol=1e-4, atol=1e-4)


def test_theta_per_vector_broadcasts() -> None:
    x, w = _draw(0, 16, n=6)
    x = _tilted(x, w)
    theta = torch.linspace(0, math.pi, 6)
    out = pseudo_rotate(x, w, theta)
    torch.testing.assert_close(angle_between(x, out), theta, rtol=0, atol=2e-4)
    torch.testing.assert_close(pseudo_rotate(x, w, 0.0), x)
    x3 = x.reshape(2, 3, 16)
    torch.testing.assert_close(pseudo_rotate(x3, w, theta.reshape(2, 3)), out.reshape(2, 3, 16))


@pytest.mark.parametrize("theta", [0.0, 0.7, math.pi / 2, math.pi])
def test_degenerate_inputs_give_reflection(theta: float) -> None:
    d = 32
    w = torch.randn(d, generator=torch.Generator().manual_seed(1))
    on_plane = torch.randn(d)
    on_plane = on_plane - (on_plane @ w) / (w @ w) * w
    cases = torch.stack([torch.zeros(d), on_plane, 3 * w, -0.5 * w])
    out = pseudo_rotate(cases, w, theta)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reflect(cases, w))
    torch.testing.assert_close(out[0], torch.zeros(d))
    torch.testing.assert_close(out[1], on_plane, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2], -3 * w, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(angle_between(cases, out)).all()


def test_zero_normal_and_tiny_vectors_are_finite() -> None:
    x = torch.randn(3, 8) * 1e-30
    assert torch.isfinite(pseudo_rotate(x, torch.zeros(8), 1.0)).all()
    assert torch.isfinite(pseudo_rotate(x, torch.ones(8), 1.0)).all()
    assert torch.isfinite(reflect(x, torch.zeros(8))).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, theta=THETAS)
def test_half_precision_in_and_out(dtype: torch.dtype, seed: int, theta: float) -> None:
    x, w = _draw(seed, 256, scale=4.0)
    x = _tilted(x, w)
    xh = x.to(dtype)
    for out, ref in (
        (pseudo_rotate(xh, w, theta), pseudo_rotate(xh.float(), w, theta)),
        (reflect(xh, w.to(dtype)), reflect(xh.float(), w)),
    ):
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * 4)
    assert angle_between(xh, xh).dtype == torch.float32


def _near_plane_case(seed: int, d: int, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x with cosine ``c`` to w (so gamma ~ 2c), |x| ~ sqrt(d), in float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    wh = w / w.norm()
    u = u - (u @ wh) * wh
    u = u / u.norm()
    x = (math.sqrt(1 - c * c) * u + c * wh) * math.sqrt(d)
    return x, w


@pytest.mark.parametrize("seed,c,theta", [(0, 3e-3, 1.0), (1, 1e-3, 0.5), (2, 5e-3, 2.5), (4, 3e-4, 1.5)])
def test_high_dim_small_gamma_matches_float64(seed: int, c: float, theta: float) -> None:
    """At d=4096 with a small gamma the fp32 law of sines is visibly off; ours matches float64."""
    d = 4096
    x64, w64 = _near_plane_case(seed, d, c)
    truth = law_of_sines(x64, w64, theta, dense=False)  # float64 reference
    scale = float(x64.norm())
    ours = pseudo_rotate(x64.float(), w64.float(), theta).double()
    naive = law_of_sines(x64.float(), w64.float(), theta, dtype=torch.float32, dense=False).double()
    err_ours = float((ours - truth).norm()) / scale
    err_naive = float((naive - truth).norm()) / scale
    assert err_ours < 1e-5
    assert err_naive > 5e-5 and err_naive > 1000 * err_ours  # 8e-5 .. 0.7 measured
    assert abs(float(angle_between(x64.float(), ours.float())) - theta) < 2e-4
