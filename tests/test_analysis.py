"""Per-layer angle fit and plane assumption, on synthetic activations whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import DataError
from hpr.evaluation.analysis import angle_fit_per_layer, plane_assumption, plane_share
from hpr.lm.capture import Captured


def captured(neg: torch.Tensor, pos: torch.Tensor, layers=(0,)) -> Captured:
    """One-token answers: question q has a negative row (neg[:, q]) and a positive row (pos[:, q])."""
    L, n, d = neg.shape
    data = torch.stack([neg, pos], dim=2).reshape(L, 2 * n, d)
    label = torch.tensor([0, 1] * n)
    question = torch.arange(n).repeat_interleave(2)
    seq = torch.arange(2 * n)
    return Captured(
        data, list(layers), label, question, seq, torch.zeros(2 * n, dtype=torch.long), seq, {"dataset": "synthetic"}
    )


def editor(d: int, w: torch.Tensor, bias: float | None = None) -> HPR:
    e = HPR(d)
    with torch.no_grad():
        e.probe.weight.copy_(w.view(1, -1))
        if bias is not None:  # last angle layer: zero weights, this bias -> constant theta
            last = [m for m in e.angle if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.fill_(bias)
    return e


def test_plane_share_known_answers():
    g = torch.Generator().manual_seed(0)
    d = 12
    w = torch.randn(d, generator=g)
    a = torch.randn(20, d, generator=g)
    wh = w / w.norm()
    ha = a - 2 * (a @ wh)[:, None] * wh
    inside = 0.7 * a - 1.3 * ha
    share, gamma = plane_share(a, inside, w)
    torch.testing.assert_close(share, torch.ones(20, dtype=torch.float64), rtol=0, atol=1e-9)
    # A vector orthogonal to both a and w (hence to Ha) has share 0; a mix has share |inside part| / |v|.
    ortho = torch.randn(20, d, generator=g, dtype=torch.float64)
    basis = torch.stack([a.double(), wh.double().expand(20, -1)], dim=1)  # (20, 2, d)
    q, _ = torch.linalg.qr(basis.transpose(1, 2))
    ortho = ortho - (q @ (q.transpose(1, 2) @ ortho.unsqueeze(-1))).squeeze(-1)
    torch.testing.assert_close(plane_share(a, ortho, w)[0], torch.zeros(20, dtype=torch.float64), rtol=0, atol=1e-6)
    mix = inside.double() / inside.double().norm(dim=-1, keepdim=True) + 2 * ortho / ortho.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(plane_share(a, mix, w)[0], torch.full((20,), 1 / math.sqrt(5), dtype=torch.float64))
    # gamma = angle(a, Ha), checked with numpy
    an, hn = a.double().numpy(), ha.double().numpy()
    cos = (an * hn).sum(1) / np.linalg.norm(an, axis=1) / np.linalg.norm(hn, axis=1)
    np.testing.assert_allclose(gamma.numpy(), np.arccos(np.clip(cos, -1, 1)), atol=1e-5)


def test_plane_assumption_per_layer():
    # Layer 0: a_pos in span{a, Ha} (share 1); layer 1: a_pos orthogonal to it (share 0).
    # a = (cos p, sin p, 0, ...) and w = e1, so Ha = (-cos p, sin p, 0, ...), gamma = pi - 2p.
    n, d, phi = 8, 6, 0.3
    a = torch.zeros(n, d)
    a[:, 0], a[:, 1] = math.cos(phi), math.sin(phi)
    a = a * torch.arange(1, n + 1).view(-1, 1)
    w = torch.zeros(d)
    w[0] = 2.0
    pos_in = torch.zeros(n, d)
    pos_in[:, 1] = 1.0  # angle to a: pi/2 - phi
    pos_out = torch.zeros(n, d)
    pos_out[:, 2] = 1.0  # angle to a: pi/2
    cap = captured(torch.stack([a, a]), torch.stack([pos_in, pos_out]), layers=(0, 1))
    es = EditorSet({0: editor(d, w), 1: editor(d, w)}, {"name": "toy"})
    df = plane_assumption(es, cap)
    assert list(df["layer"]) == [0, 1] and list(df["pairs"]) == [n, n]
    assert df["mean_share"].tolist() == pytest.approx([1.0, 0.0], abs=1e-9)
    assert df["median_share"].tolist() == pytest.approx([1.0, 0.0], abs=1e-9)
    assert df["mean_gamma"].tolist() == pytest.approx([math.pi - 2 * phi] * 2, abs=1e-5)
    assert df["mean_target"].tolist() == pytest.approx([math.pi / 2 - phi, math.pi / 2], abs=1e-5)


def test_angle_fit_per_layer():
    g = torch.Generator().manual_seed(1)
    n, d = 30, 16
    neg = torch.randn(2, n, d, generator=g) * torch.tensor([1.0, 100.0]).view(2, 1, 1)
    pos = torch.randn(2, n, d, generator=g)
    cap = captured(neg, pos, layers=(3, 5))
    w = torch.randn(d, generator=g)
    # layer 3 predicts pi * sigmoid(-12) (about 2e-5 rad); layer 5 pi * sigmoid(0) = pi/2.
    es = EditorSet({3: editor(d, w, -12.0), 5: editor(d, w, 0.0), 7: editor(d, w)}, {"name": "toy"})
    df = angle_fit_per_layer(es, cap)
    assert list(df["layer"]) == [3, 5] and list(df["pairs"]) == [n, n]
    for j, pred in enumerate([math.pi / (1 + math.exp(12)), math.pi / 2]):
        an, pn = neg[j].double().numpy(), pos[j].double().numpy()
        cos = (an * pn).sum(1) / np.linalg.norm(an, axis=1) / np.linalg.norm(pn, axis=1)
        target = np.arccos(cos)
        row = df.iloc[j]
        assert row["mean_target"] == pytest.approx(target.mean(), abs=1e-5)
        assert row["mean_pred"] == pytest.approx(pred, rel=1e-4)
        assert row["mean_abs_error"] == pytest.approx(np.abs(pred - target).mean(), abs=1e-4)
        assert row["mean_input_norm"] == pytest.approx(np.linalg.norm(an, axis=1).mean(), rel=1e-5)
    assert df["share_pred_below_0.01"].tolist() == [1.0, 0.0]


def test_no_common_layer_or_no_pairs():
    cap = captured(torch.randn(1, 4, 6), torch.randn(1, 4, 6), layers=(2,))
    with pytest.raises(DataError, match="no captured layer"):
        angle_fit_per_layer(EditorSet({0: HPR(6)}, {"name": "toy"}), cap)
    only_neg = Captured(
        cap.data, cap.layers, torch.zeros_like(cap.label), cap.question, cap.sequence, cap.position, cap.token, cap.meta
    )
    with pytest.raises(DataError, match="no \\(negative, positive\\) pairs"):
        plane_assumption(EditorSet({2: HPR(6)}, {"name": "toy"}), only_neg)
