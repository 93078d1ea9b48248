"""Fast paths give the same results as the plain kernels; the paper's reference design agrees.

``reference_kernels.fused_edit`` (a second fast form, kept as a test reference) and ``HPR.edit`` must equal
``where(negative, pseudo_rotate(x, w, theta) or reflect(x, w), x)`` to float32 rounding, on random
and degenerate inputs, in float32/bf16/fp16; unedited vectors must come back bitwise.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_kernels import fused_edit

from hpr import EditorSet
from hpr.editor import HPR
from hpr.errors import EditorError
from hpr.householder import PLANE_TOL, edit_negatives, pseudo_rotate, reflect
from hpr.lm.architectures import fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference import householder_matrix, reference_edit  # noqa: E402


def plain_edit(x: torch.Tensor, w: torch.Tensor, theta: torch.Tensor | None, neg: torch.Tensor) -> torch.Tensor:
    moved = reflect(x, w) if theta is None else pseudo_rotate(x, w, theta)
    return torch.where(neg.unsqueeze(-1), moved, x)


def close(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, rtol: float = 2e-5) -> None:
    """``a`` equals ``b`` up to ``rtol`` times the norm of each input vector (per vector)."""
    scale = x.float().norm(dim=-1, keepdim=True).clamp_min(1e-30)
    err = ((a.float() - b.float()) / scale).abs().max().item()
    assert err <= rtol, err


@settings(max_examples=60, deadline=None)
@given(
    d=st.sampled_from([2, 3, 8, 64, 576, 4096]),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    angle=st.booleans(),
)
def test_fused_equals_plain_random(d: int, n: int, seed: int, scale: float, angle: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, d, generator=g) * scale
    w = torch.randn(d, generator=g)
    theta = torch.rand(n, 3, generator=g) * math.pi if angle else None
    neg = torch.rand(n, 3, generator=g) < 0.6
    got = fused_edit(x, w, theta, neg)
    # Both forms lose about eps / sin(angle(x, w)) when x is nearly parallel to w (seen: 2.2e-5
    # relative at d=2, angle(x, Hx) = 3.138), so the per-vector tolerance here is 1e-4.
    close(got, plain_edit(x, w, theta, neg), x, rtol=1e-4)
    assert torch.equal(got[~neg], x[~neg])
    assert got.dtype == x.dtype and got.shape == x.shape


def test_fused_theta_endpoints_and_scalars() -> None:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 256, generator=g), torch.randn(256, generator=g)
    neg = torch.ones(4, dtype=torch.bool)
    for th in (0.0, 1e-7, math.pi / 2, math.pi - 1e-6, math.pi):
        close(fused_edit(x, w, th, neg), plain_edit(x, w, torch.full((4,), th), neg), x)
    close(fused_edit(x, w, 0.3, True), pseudo_rotate(x, w, 0.3), x)
    assert torch.equal(fused_edit(x, w, 0.3, False), x)


def test_fused_degenerate_inputs() -> None:
    d = 16
    w = torch.zeros(d)
    w[3] = 2.0
    on_plane = torch.randn(d)
    on_plane[3] = 0.0
    parallel = torch.zeros(d)
    parallel[3] = -5.0
    x = torch.stack([torch.zeros(d), on_plane, parallel, 3.0 * parallel, torch.full((d,), 1e-20)])
    neg = torch.ones(len(x), dtype=torch.bool)
    for theta in (torch.full((len(x),), 1.0), None):
        got = fused_edit(x, w, theta, neg)
        want = plain_edit(x, w, theta, neg)
        assert torch.isfinite(got).all()
        close(got, want, x, rtol=1e-6)
    # undefined plane -> H x: zero stays zero, on-plane stays, parallel flips
    got = fused_edit(x, w, torch.full((len(x),), 1.0), neg)
    assert torch.equal(got[0], x[0])
    close(got[1:2], x[1:2], x[1:2], rtol=1e-7)
    close(got[2:4], -x[2:4], x[2:4], rtol=1e-7)


def test_fused_nearly_parallel_random_normal() -> None:
    """x a multiple of a random w: both paths treat the plane as (numerically) undefined or agree."""
    g = torch.Generator().manual_seed(5)
    for d in (8, 576, 4096):
        w = torch.randn(d, generator=g)
        x = torch.stack([2.5 * w, -0.1 * w])
        neg = torch.ones(2, dtype=torch.bool)
        got = fused_edit(x, w, torch.full((2,), 0.7), neg)
        assert torch.isfinite(got).all()
        close(got, plain_edit(x, w, torch.full((2,), 0.7), neg), x, rtol=1e-5)
        # norm preserved whatever branch is taken
        torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1), rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_precision(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(5, 7, 64, generator=g) * 4).to(dtype)
    w = torch.randn(64, generator=g)
    theta = torch.rand(5, 7, generator=g) * math.pi
    neg = torch.rand(5, 7, generator=g) < 0.5
    got = fused_edit(x, w, theta, neg)
    want = plain_edit(x, w, theta, neg)
    assert got.dtype == dtype
    assert torch.equal(got[~neg], x[~neg])
    # both round the same float32 result to `dtype`: at most one unit in the last place apart
    ulp = 2.0 ** -(8 if dtype == torch.bfloat16 else 11)
    close(got, want, x, rtol=2 * ulp)


@pytest.mark.parametrize(
    ("use_angle", "layers", "angle_input"),
    [
        (True, 1, "raw"),
        (True, 2, "raw"),
        (True, 3, "raw"),
        (False, 3, "raw"),
        (True, 1, "unit"),
        (True, 4, "unit"),
        (False, 4, "unit"),
    ],
)
def test_hpr_edit_equals_plain_kernels(use_angle: bool, layers: int, angle_input: str) -> None:
    """One angle layer: ``x . w^`` from its own product; more: stacked on the first layer's (raw
    input only; the unit variant's network reads another vector)."""
    torch.manual_seed(3)
    e = HPR(48, angle_layers=layers, use_angle=use_angle, angle_input=angle_input)
    x = torch.randn(3, 11, 48) * 2
    with torch.no_grad():
        got = e.edit(x)
        neg = e.logits(x) < 0
        want = plain_edit(x, e.normal, e.theta(x) if use_angle else None, neg)
    assert 0 < int(neg.sum()) < neg.numel()
    close(got, want, x)
    assert torch.equal(got[~neg], x[~neg])


def test_reference_design_matches_kernel_small_d() -> None:
    """The paper's dense-matrix, law-of-sines, diag_embed-mask design equals our edit (small d)."""
    torch.manual_seed(4)
    for d in (4, 8, 32):
        e = HPR(d, angle_layers=2)
        x = torch.randn(2, 9, d)
        w = e.normal.detach()
        h = householder_matrix(w)
        torch.testing.assert_close(x @ h, reflect(x, w), rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            ours, ref = e.edit(x), reference_edit(e, x)
        # the law of sines is well conditioned only away from the undefined plane
        hx = reflect(x, w)
        gamma = torch.nn.functional.cosine_similarity(x, hx, dim=-1).clamp(-1, 1).acos()
        ok = torch.sin(gamma) > 0.05
        assert ok.sum() > 0
        torch.testing.assert_close(ours[ok], ref[ok], rtol=1e-4, atol=1e-4)
        e.use_angle = False
        with torch.no_grad():
            torch.testing.assert_close(e.edit(x), reference_edit(e, x), rtol=1e-5, atol=1e-5)


def test_editor_set_fast_path_in_model(tiny_model, tokenizer) -> None:
    """Through the hooks: the fused edit gives the same logits as hooks running the plain kernels."""
    from hpr.lm.hooks import edit_block_outputs

    ids = tokenizer(["hello world", "the cat sat"], return_tensors="pt", padding=True)
    torch.manual_seed(6)
    eds = {i: HPR(64) for i in range(4)}
    es = EditorSet(eds, fingerprint(tiny_model), selected=[0, 2])

    def slow(e: HPR):
        return lambda x: plain_edit(x, e.normal.detach(), e.theta(x), e.logits(x) < 0)

    with torch.no_grad():
        with es.apply(tiny_model):
            fast = tiny_model(**ids).logits
        with edit_block_outputs(tiny_model, {i: slow(eds[i]) for i in es.selected}):
            plain = tiny_model(**ids).logits
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_plane_tolerance_shared() -> None:
    assert PLANE_TOL == pytest.approx(1e-6)


@settings(max_examples=60, deadline=None)
@given(
    d=st.sampled_from([2, 3, 8, 64, 576]),
    n=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    angle=st.booleans(),
)
def test_edit_negatives_equals_fused(d: int, n: int, seed: int, scale: float, angle: bool) -> None:
    """The decode path (negatives from the sign of x . w^) equals the general fused edit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * scale
    w = torch.randn(d, generator=g)
    wh = w / w.norm()
    dot = x @ wh
    theta = torch.rand(n, generator=g) * math.pi if angle else None
    got = edit_negatives(x, wh, dot[:, None], None if theta is None else theta[:, None])
    want = fused_edit(x, w, theta, dot < 0)
    close(got, want, x, rtol=1e-4)
    assert torch.equal(got[dot >= 0], x[dot >= 0])


def test_edit_negatives_degenerate_inputs() -> None:
    d = 16
    w = torch.zeros(d)
    w[3] = 2.0
    wh = w / 2.0
    on_plane = torch.randn(d)
    on_plane[3] = 0.0
    anti = torch.zeros(d)
    anti[3] = -5.0
    nearly = anti.clone()
    nearly[0] = 1e-9
    x = torch.stack([torch.zeros(d), on_plane, anti, 3.0 * anti, nearly, torch.full((d,), -1e-20)])
    dot = x @ wh
    for theta in (torch.full((len(x),), 1.0), None):
        got = edit_negatives(x, wh, dot[:, None], None if theta is None else theta[:, None])
        assert torch.isfinite(got).all()
        close(got, fused_edit(x, w, theta, dot < 0), x, rtol=1e-6)
    got = edit_negatives(x, wh, dot[:, None], torch.full((len(x), 1), 1.0))
    assert torch.equal(got[:2], x[:2])  # zero and on-plane vectors are not negatives
    close(got[2:5], -x[2:5], x[2:5], rtol=1e-6)  # anti-parallel: undefined plane, reflected


def test_edit_cache_follows_weight_changes() -> None:
    torch.manual_seed(8)
    e = HPR(32, angle_layers=2)
    x = torch.randn(5, 32)
    with torch.no_grad():
        before = e.edit(x)
        e.probe.weight.mul_(-1.0)  # in place: flips which vectors are negatives
        after = e.edit(x)
        want = plain_edit(x, e.normal, e.theta(x), e.logits(x) < 0)
    close(after, want, x)
    assert not torch.allclose(before, after)
    e.probe.weight = torch.nn.Parameter(torch.randn(1, 32))  # replaced
    with torch.no_grad():
        close(e.edit(x), plain_edit(x, e.normal, e.theta(x), e.logits(x) < 0), x)
        e.angle[0].weight.mul_(3.0)  # the first angle layer is cached stacked with w^
        e.angle[0].bias.add_(0.5)
        close(e.edit(x), plain_edit(x, e.normal, e.theta(x), e.logits(x) < 0), x)
    e.angle.to(torch.bfloat16)  # angle network in another dtype: the unstacked path
    with torch.no_grad():
        close(e.edit(x), plain_edit(x, e.normal, e.theta(x), e.logits(x) < 0), x, rtol=1e-2)


def test_edit_restores_global_modes(monkeypatch) -> None:
    """The edit switches oneDNN off (for GELU) and autograd off only while it runs."""
    import hpr.editor as editor_mod

    e = HPR(16, angle_layers=3)
    x = torch.randn(4, 16, requires_grad=True)
    onednn = torch.backends.mkldnn.enabled
    assert torch.is_grad_enabled()
    y = e.edit(x)
    assert torch.is_grad_enabled() and torch.backends.mkldnn.enabled == onednn
    assert not y.requires_grad  # the edit is not differentiated
    with pytest.raises(EditorError, match="hidden size 16"):
        e.edit(torch.randn(4, 15))

    def boom(*_a):
        raise RuntimeError("inside the edit")

    monkeypatch.setattr(editor_mod, "edit_rows", boom)
    with pytest.raises(RuntimeError, match="inside"):
        e.edit(x)
    assert torch.is_grad_enabled() and torch.backends.mkldnn.enabled == onednn


def test_apply_reads_weights_once_per_block(tiny_model, tokenizer) -> None:
    """Inside ``apply()`` the hooks use the weights read at the first edit; the next block sees changes."""
    ids = tokenizer(["hello world"], return_tensors="pt")
    torch.manual_seed(11)
    es = EditorSet({i: HPR(64) for i in range(4)}, fingerprint(tiny_model), selected=[1])
    with torch.no_grad():
        with es.apply(tiny_model):
            first = tiny_model(**ids).logits
            es.editors[1].probe.weight.mul_(-1.0)
            same = tiny_model(**ids).logits
        with es.apply(tiny_model):
            flipped = tiny_model(**ids).logits
    assert torch.equal(first, same)
    assert not torch.allclose(first, flipped)


def test_compiled_path_falls_back_to_eager(monkeypatch) -> None:
    """A compiler failure warns once and gives the eager result."""
    import hpr.editor as editor_mod

    def broken(fn, **_kw):
        def run(*_a):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(editor_mod, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(9)
    e = HPR(24, angle_layers=2)
    x = torch.randn(2, 5, 24)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="eager"):
        got = e.edit(x, compiled=True)
    with torch.no_grad():
        assert torch.equal(got, e.edit(x))
        assert torch.equal(e.edit(x, compiled=True), e.edit(x))  # no second warning needed


def _compiler_available() -> str | None:
    """None when ``torch.compile`` works here (checked on a one-line function), else the reason."""
    try:
        fn = torch.compile(lambda t: t * 2 + 1, dynamic=False)
        if not torch.equal(fn(torch.arange(4.0)), torch.arange(4.0) * 2 + 1):
            return "torch.compile gives wrong numbers for a one-line function"
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: no compiler here
        return f"torch.compile is unavailable here ({type(exc).__name__}: {exc})"
    return None


@pytest.mark.slow
def test_compiled_path_equals_eager(tiny_model, tokenizer, monkeypatch) -> None:
    """``EditorSet.apply(model, compiled=True)`` runs the edit through ``torch.compile`` (the
    compiled function is called and returns, no eager fallback) and gives the eager logits."""
    import warnings

    import hpr.editor as editor_mod

    reason = _compiler_available()
    if reason:
        pytest.skip(reason)
    calls = {"compiled": 0}
    real_compile = torch.compile

    def counting_compile(fn, **kw):
        compiled = real_compile(fn, **kw)

        def run(*args):
            out = compiled(*args)  # raises (and the editor falls back) if compilation fails
            calls["compiled"] += 1
            return out

        return run

    monkeypatch.setattr(editor_mod, "_COMPILED", {})  # fresh: no earlier fallback carries over
    monkeypatch.setattr(torch, "compile", counting_compile)
    ids = tokenizer(["hello world", "the cat sat"], return_tensors="pt", padding=True)
    torch.manual_seed(6)
    es = EditorSet({i: HPR(64) for i in range(4)}, fingerprint(tiny_model), selected=[0, 2])
    with torch.no_grad():
        base = tiny_model(**ids).logits
        with es.apply(tiny_model):
            eager = tiny_model(**ids).logits
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with es.apply(tiny_model, compiled=True):
                compiled = tiny_model(**ids).logits
    fallback = [str(w.message) for w in caught if "using the eager path" in str(w.message)]
    assert not fallback and not editor_mod._COMPILED.get("failed")
    assert calls["compiled"] == 2  # one call per edited layer, both through the compiled graph
    assert not torch.allclose(eager, base)  # the edit matters, so equal logits say something
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_reference_design_spreads_one_nan_to_its_sequence() -> None:
    """A token on the hyperplane (gamma = 0) makes the law of sines divide by zero in the reference
    design, and its diag_embed mask products carry that NaN into every token of the sequence.
    Our edit stays finite (the benchmarks' reference rows time this design as it is)."""
    torch.manual_seed(10)
    e = HPR(32, angle_layers=2)
    with torch.no_grad():  # a basis-vector normal: H is exact in float32, so gamma is exactly 0 below
        e.probe.weight.zero_()
        e.probe.weight[0, 3] = 2.0
    x = torch.randn(2, 6, 32)
    x[0, 3, 3] = 0.0  # token 3 of sequence 0 on the hyperplane
    with torch.no_grad():
        ref, ours = reference_edit(e, x), e.edit(x)
    assert not torch.isfinite(ref[0]).any()  # the whole first sequence
    assert torch.isfinite(ref[1]).all()  # the other sequence is untouched
    assert torch.isfinite(ours).all()
