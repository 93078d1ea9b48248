"""Diff on synthetic tensors and the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from hpr.architectures import fingerprint
from hpr.diff import (
    Diff,
    StackedMLP,
    diff_net,
    diff_widths,
    fit_diff,
    train_stacked,
    training_rows,
    val_improvement,
)
from hpr.editor import HPR, EditorSet
from hpr.errors import EditorError, ParameterError
from hpr.records import Record
from tests.conftest import tiny_llama


def random_diff(model, layers=(1, 2), seed=1) -> Diff:
    torch.manual_seed(seed)
    return Diff({i: diff_net(64) for i in range(4)}, fingerprint(model), list(layers))


def batch(tokenizer):
    return tokenizer(["Q: hello\nA: world", "Q: hi\nA:  there!"], return_tensors="pt", padding=True)


def records(n: int, offset: int = 0) -> list[Record]:
    return [Record(id=f"q{i}", prompt=f"Is {i} odd?", choices=("no" if i % 2 == 0 else "yes", "perhaps so"),
                   correct=(0,), best=0, mc1=(0, 1)) for i in range(offset, offset + n)]


def test_widths_follow_angle_network():
    assert diff_widths(64) == [64, 32, 16, 8, 64]
    assert diff_net(64)(torch.zeros(3, 64)).shape == (3, 64)


def test_apply_adds_net_output_and_restores(tiny_model, tokenizer):
    ids = batch(tokenizer)
    method = random_diff(tiny_model)
    base = tiny_model(**ids).logits
    seen = {}
    block = tiny_model.model.layers[1]
    with method.apply(tiny_model):
        h = block.register_forward_hook(lambda m, a, o: seen.setdefault("out", o[0] if isinstance(o, tuple) else o))
        edited = tiny_model(**ids).logits
        h.remove()
    assert not torch.allclose(base, edited)
    assert torch.equal(tiny_model(**ids).logits, base)
    with pytest.raises(RuntimeError), method.apply(tiny_model):
        raise RuntimeError("boom")
    assert torch.equal(tiny_model(**ids).logits, base)


def test_batch_edits_every_element(tiny_model, tokenizer):
    method = random_diff(tiny_model)
    texts = ["Q: a\nA: b", "Q: ccc\nA: d", "Q: e\nA: ff"]
    ids = tokenizer(texts, return_tensors="pt", padding=True)
    base = tiny_model(**ids).logits
    with method.apply(tiny_model):
        together = tiny_model(**ids).logits
        for i, t in enumerate(texts):
            alone = tiny_model(**tokenizer([t], return_tensors="pt")).logits[0]
            n = alone.shape[0]
            assert torch.allclose(together[i, :n], alone, atol=1e-5)
            assert not torch.allclose(together[i, :n], base[i, :n])


def test_save_load_round_trip_and_mismatch(tiny_model, tokenizer, tmp_path):
    ids = batch(tokenizer)
    method = random_diff(tiny_model)
    method.save(tmp_path / "d")
    loaded = Diff.load(tmp_path / "d", tiny_model)
    assert loaded.layers == [1, 2]
    with method.apply(tiny_model):
        a = tiny_model(**ids).logits
    with loaded.apply(tiny_model):
        b = tiny_model(**ids).logits
    assert torch.equal(a, b)
    other = tiny_llama(layers=3)
    with pytest.raises(EditorError):
        Diff.load(tmp_path / "d", other)
    with pytest.raises(EditorError), method.apply(other):
        pass


def test_stacked_unstack_matches():
    net = StackedMLP(3, diff_widths(16), seed=0)
    x = torch.randn(3, 5, 16)
    y = net(x)
    for j in range(3):
        assert torch.allclose(net.unstack(j, 16, 4)(x[j]), y[j], atol=1e-5)


def test_training_learns_synthetic_shift():
    torch.manual_seed(0)
    d, n = 32, 256
    shift = torch.randn(d) * 2
    neg_x = torch.randn(n, d) - shift / 2
    data = torch.cat([neg_x, neg_x + shift]).unsqueeze(0).repeat(2, 1, 1)  # (L=2, 2n, d)
    neg, pos = torch.arange(n), torch.arange(n, 2 * n)
    src, tgt = training_rows(neg, pos)
    assert len(src) == 2 * n
    net = train_stacked(data, src, tgt, epochs=20, batch_size=32, lr=3e-3, progress=False)
    imp = val_improvement(net, data, src, tgt)
    assert imp.shape == (2,) and (imp > 0.5).all()


def test_fit_on_tiny_model_picks_layers(tiny_model, tokenizer):
    m = fit_diff(model=tiny_model, tokenizer=tokenizer, train=records(6), val=records(3, 50),
                 k=2, epochs=1, progress=False)
    assert len(m.layers) == 2 and sorted(m.nets) == [0, 1, 2, 3]
    imp = {int(k): v for k, v in m.config["val_mse_improvement"].items()}
    assert all(imp[i] >= imp[j] for i in m.layers for j in imp if j not in m.layers)


def test_fit_uses_hpr_layers(tiny_model, tokenizer, tmp_path):
    es = EditorSet({i: HPR(64) for i in range(4)}, fingerprint(tiny_model), selected=[3, 1])
    es.save(tmp_path / "hpr")
    m = fit_diff(model=tiny_model, tokenizer=tokenizer, train=records(4), val=[],
                 editors_dir=tmp_path / "hpr", epochs=1, progress=False)
    assert m.layers == [3, 1] and sorted(m.nets) == [1, 3]
    with pytest.raises(ParameterError):
        fit_diff(model=tiny_model, tokenizer=tokenizer, train=records(4), val=[], layers=[1],
                 editors_dir=tmp_path / "hpr", progress=False)
