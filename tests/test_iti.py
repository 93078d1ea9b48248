"""ITI on the tiny random Llama: fitting, applying everywhere, restoring, saving."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

import hpr.methods.iti as iti_mod
from hpr.data.records import Record
from hpr.errors import EditorError
from hpr.methods.iti import ITI, default_k, fit_iti
from hpr.methods.iti_heads import head_dim, mass_mean_directions, qa_examples
from tests.conftest import tiny_llama


def records(n: int, offset: int = 0) -> list[Record]:
    out = []
    for i in range(offset, offset + n):
        out.append(
            Record(
                id=f"q{i}",
                prompt=f"Is {i} even?",
                choices=("yes" if i % 2 == 0 else "no", "maybe", "never"),
                correct=(0,),
                best=0,
                mc1=(0, 1, 2),
            )
        )
    return out


@pytest.fixture
def fitted(tiny_model, tokenizer) -> ITI:
    return fit_iti(model=tiny_model, tokenizer=tokenizer, train=records(8), val=records(4, 100), k=3, progress=False)


def batch(tokenizer):
    return tokenizer(["Q: hello\nA: world", "Q: hi\nA:  there!"], return_tensors="pt", padding=True)


def test_default_k_keeps_paper_fraction():
    assert default_k(1024) == 48
    assert default_k(270) == 13
    assert default_k(16) == 1


def test_fit_stores_train_stats(fitted, tiny_model):
    assert len(fitted.heads) == 3 and len(set(fitted.heads)) == 3
    assert torch.allclose(fitted.directions.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert fitted.head_dim == head_dim(tiny_model) == 16
    assert fitted.config["n_train_examples"] == 24 and fitted.config["n_val_examples"] == 12


#: Constructed per-head activations: the heads that carry the label and how strongly (in units of
#: the noise's standard deviation, along one fixed direction per head); every other head is noise.
SIGNAL = {(1, 2): 5.0, (3, 0): 1.5}


def _constructed(texts, labels, layers=4, heads=4, hd=16) -> torch.Tensor:
    """``(N, L, H, hd)`` activations: Gaussian noise per text (seeded by the text), plus
    ``strength * (2 y - 1) * u`` on the ``SIGNAL`` heads."""
    g = torch.Generator().manual_seed(1234)
    dirs = {cell: torch.nn.functional.normalize(torch.randn(hd, generator=g), dim=0) for cell in SIGNAL}
    out = torch.empty(len(texts), layers, heads, hd)
    for n, t in enumerate(texts):
        out[n] = torch.randn(layers, heads, hd, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
        for (la, he), strength in SIGNAL.items():
            out[n, la, he] += strength * (2 * labels[t] - 1) * dirs[(la, he)]
    return out


def test_fit_ranks_heads_by_independent_val_probe_accuracy(tiny_model, tokenizer, monkeypatch):
    """On constructed activations where two known heads carry the label, the edited heads are the
    best by a logistic probe's validation accuracy computed here with sklearn, the signal heads
    first (strong before weak), and directions and scales come from the train activations."""
    from sklearn.linear_model import LogisticRegression

    train, val = records(40), records(20, 100)
    labels = {}
    for r in (*train, *val):
        for i, choice in enumerate(r.choices):
            labels[f"Q: {r.prompt} A: {choice}"] = int(i in r.correct)
    monkeypatch.setattr(iti_mod, "head_activations", lambda _m, _t, texts, *_a, **_k: _constructed(texts, labels))
    fitted = fit_iti(model=tiny_model, tokenizer=tokenizer, train=train, val=val, k=3, progress=False)

    def split(recs):
        texts = [f"Q: {r.prompt} A: {c}" for r in recs for c in r.choices]
        return _constructed(texts, labels).numpy().astype(np.float64), np.array([labels[t] for t in texts])

    (xtr, ytr), (xva, yva) = split(train), split(val)
    acc = {}
    for la in range(4):
        for he in range(4):
            clf = LogisticRegression(max_iter=1000).fit(xtr[:, la, he], ytr)
            acc[(la, he)] = float((clf.predict(xva[:, la, he]) == yva).mean())
    assert acc[(1, 2)] == 1.0 and acc[(3, 0)] > max(v for c, v in acc.items() if c not in SIGNAL)
    noise_best = max((c for c in acc if c not in SIGNAL), key=lambda c: (acc[c], -c[0], -c[1]))
    assert fitted.heads == [(1, 2), (3, 0), noise_best]
    ranked = [(r["layer"], r["head"], r["val_accuracy"]) for r in fitted.config["ranking"]]
    assert ranked[:3] == [(la, he, pytest.approx(acc[(la, he)])) for la, he in fitted.heads]
    assert len(ranked) == 16 and len(fitted.ranked) == 16  # every head is ranked: k is a load option
    np.testing.assert_allclose(
        np.array(fitted.config["val_accuracy"]), np.array([[acc[(la, he)] for he in range(4)] for la in range(4)])
    )
    for (la, he), d, s in zip(fitted.heads, fitted.directions, fitted.sigmas, strict=True):
        u = xtr[ytr == 1, la, he].mean(0) - xtr[ytr == 0, la, he].mean(0)
        u /= np.linalg.norm(u)
        np.testing.assert_allclose(d.numpy(), u, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(s), np.std(xtr[:, la, he] @ u), rtol=1e-4)


def test_statistics_come_from_train_only(tiny_model, tokenizer):
    train = records(8)
    a = fit_iti(model=tiny_model, tokenizer=tokenizer, train=train, val=records(4, 100), k=2, progress=False)
    b = fit_iti(model=tiny_model, tokenizer=tokenizer, train=train, val=records(4, 100), k=2, progress=False)
    # Same val split -> same heads; directions/sigmas depend on train only, so a different val
    # split that happens to select the same heads must give the same statistics.
    c = fit_iti(model=tiny_model, tokenizer=tokenizer, train=train, val=records(6, 300), k=16, progress=False)
    assert a.heads == b.heads
    for head, d, s in zip(a.heads, a.directions, a.sigmas, strict=True):
        j = c.heads.index(head)
        assert torch.equal(c.directions[j], d) and torch.equal(c.sigmas[j], s)


def test_mass_mean_direction_and_scale():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]])
    y = torch.tensor([1, 1, 0, 0])
    d, s = mass_mean_directions(x, y)
    assert torch.allclose(d, torch.tensor([1.0, 0.0]))
    assert torch.isclose(s, torch.tensor(float(np.std([1.0, 3.0, -1.0, -3.0]))))  # population std, as np.std


def test_qa_examples_labels():
    texts, y = qa_examples(records(1))
    assert texts == ["Q: Is 0 even? A: yes", "Q: Is 0 even? A: maybe", "Q: Is 0 even? A: never"]
    assert y.tolist() == [1, 0, 0]


def test_k_option_and_default(tiny_model, tokenizer):
    m = fit_iti(model=tiny_model, tokenizer=tokenizer, train=records(8), val=records(4, 100), k=5, progress=False)
    assert len(m.heads) == 5 and m.config["k"] == 5
    d = fit_iti(model=tiny_model, tokenizer=tokenizer, train=records(8), val=records(4, 100), progress=False)
    assert len(d.heads) == default_k(4 * 4) == 1


def _raw_o_proj_inputs(model, tokenizer, texts, layer) -> np.ndarray:
    """o_proj input at each text's last token, one text per forward pass: ``(N, H * head_dim)``."""
    rows = []
    proj = model.model.layers[layer].self_attn.o_proj
    h = proj.register_forward_pre_hook(lambda _m, args: rows.append(args[0][0, -1].detach().numpy().copy()))
    try:
        with torch.no_grad():
            for t in texts:
                model(**tokenizer([t], return_tensors="pt"))
    finally:
        h.remove()
    return np.stack(rows).astype(np.float64)


def test_shift_at_every_position_of_every_element(fitted, tiny_model, tokenizer):
    ids = batch(tokenizer)
    layer = fitted.layers[0]
    seen: dict[str, torch.Tensor] = {}
    proj = tiny_model.model.layers[layer].self_attn.o_proj

    def grab(name):
        def hook(_m, args):
            seen[name] = args[0].detach().clone()

        return hook

    h = proj.register_forward_pre_hook(grab("before"))
    with fitted.apply(tiny_model):
        h2 = proj.register_forward_pre_hook(grab("after"))  # runs after the ITI hook
        tiny_model(**ids)
    h.remove()
    h2.remove()
    delta = seen["after"] - seen["before"]
    # Expected shift from the raw train activations, with numpy: per edited head of this layer,
    # alpha * std(x . u) * u with u the unit mass-mean difference (true - false).
    texts, labels = [], []
    for r in records(8):
        for i, choice in enumerate(r.choices):
            texts.append(f"Q: {r.prompt} A: {choice}")
            labels.append(i in r.correct)
    x, y = _raw_o_proj_inputs(tiny_model, tokenizer, texts, layer), np.array(labels)
    hd = fitted.head_dim
    expected = np.zeros(x.shape[1])
    for la, head in fitted.heads:
        if la != layer:
            continue
        xh = x[:, head * hd : (head + 1) * hd]
        u = xh[y].mean(0) - xh[~y].mean(0)
        u /= np.linalg.norm(u)
        expected[head * hd : (head + 1) * hd] += 15.0 * np.std(xh @ u) * u
    assert np.abs(expected).sum() > 0
    exp_t = torch.tensor(expected, dtype=delta.dtype).expand_as(delta)
    torch.testing.assert_close(delta, exp_t, rtol=1e-4, atol=1e-4)


def test_apply_changes_and_restores_bit_for_bit(fitted, tiny_model, tokenizer):
    ids = batch(tokenizer)
    base = tiny_model(**ids).logits
    with fitted.apply(tiny_model):
        edited = tiny_model(**ids).logits
    assert not torch.allclose(base, edited)
    assert torch.equal(tiny_model(**ids).logits, base)
    with pytest.raises(RuntimeError), fitted.apply(tiny_model):
        raise RuntimeError("boom")
    assert torch.equal(tiny_model(**ids).logits, base)


def test_alpha_scales_edit(fitted, tiny_model, tokenizer):
    ids = batch(tokenizer)
    base = tiny_model(**ids).logits
    with fitted.apply(tiny_model):
        e15 = tiny_model(**ids).logits
    with fitted.with_alpha(200.0).apply(tiny_model):
        e200 = tiny_model(**ids).logits
    assert (e200 - base).abs().mean() > (e15 - base).abs().mean()
    with fitted.with_alpha(0.0).apply(tiny_model):
        assert torch.equal(tiny_model(**ids).logits, base)


def test_batch_edits_every_element(fitted, tiny_model, tokenizer):
    texts = ["Q: a\nA: b", "Q: ccc\nA: d", "Q: e\nA: ff"]
    tokenizer.padding_side = "right"
    ids = tokenizer(texts, return_tensors="pt", padding=True)
    with fitted.apply(tiny_model):
        together = tiny_model(**ids).logits
        for i, t in enumerate(texts):
            alone = tiny_model(**tokenizer([t], return_tensors="pt")).logits[0]
            n = alone.shape[0]
            assert torch.allclose(together[i, :n], alone, atol=1e-5)
    base = tiny_model(**ids).logits
    for i in range(len(texts)):
        n = int(ids["attention_mask"][i].sum())
        assert not torch.allclose(together[i, :n], base[i, :n])


def test_save_load_round_trip(fitted, tiny_model, tokenizer, tmp_path):
    ids = batch(tokenizer)
    fitted.save(tmp_path / "iti")
    loaded = ITI.load(tmp_path / "iti", tiny_model)
    assert loaded.heads == fitted.heads and loaded.alpha == 15.0
    with fitted.apply(tiny_model):
        a = tiny_model(**ids).logits
    with loaded.apply(tiny_model):
        b = tiny_model(**ids).logits
    assert torch.equal(a, b)
    assert ITI.load(tmp_path / "iti", alpha=200.0).alpha == 200.0


def test_mismatched_model_refused(fitted, tmp_path):
    other = tiny_llama(layers=3)
    with pytest.raises(EditorError), fitted.apply(other):
        pass
    fitted.save(tmp_path / "iti")
    with pytest.raises(EditorError):
        ITI.load(tmp_path / "iti", other)


def test_generate_edits_each_new_token(fitted, tiny_model, tokenizer):
    """generate() with the edit gives other tokens than without it, the same tokens as recomputing
    every position without a KV cache, the same shift at the prompt and at each new token, and
    the unedited tokens again once the context manager has exited."""
    ids = tokenizer(["Q: hello\nA:"], return_tensors="pt")
    kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    base = tiny_model.generate(**ids, **kw)
    strong = fitted.with_alpha(500.0)
    layer = strong.layers[0]
    proj = tiny_model.model.layers[layer].self_attn.o_proj
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    first = proj.register_forward_pre_hook(lambda _m, a: before.append(a[0].detach().clone()))
    try:
        with strong.apply(tiny_model):
            last = proj.register_forward_pre_hook(lambda _m, a: after.append(a[0].detach().clone()))
            try:
                edited = tiny_model.generate(**ids, **kw)
            finally:
                last.remove()
            # Without a KV cache every position is recomputed and edited; same tokens.
            nocache = tiny_model.generate(**ids, use_cache=False, **kw)
    finally:
        first.remove()
    assert edited.shape == base.shape and not torch.equal(edited, base)
    assert torch.equal(edited, nocache)
    assert torch.equal(tiny_model.generate(**ids, **kw), base)
    # prefill then one row per new token, each edited by the same constant shift
    assert [b.shape[1] for b in before[: len(after)]] == [ids["input_ids"].shape[1], 1, 1, 1, 1]
    shift = after[0][0, 0] - before[0][0, 0]
    assert shift.abs().max() > 1.0
    for b, a in zip(before, after, strict=False):
        torch.testing.assert_close(a - b, shift.expand_as(a), rtol=1e-4, atol=1e-4)
