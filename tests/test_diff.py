"""Diff on synthetic tensors and the tiny random Llama: the authors' design and the prose (mse) one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import erf

from hpr.data.records import Record
from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import EditorError, ParameterError
from hpr.lm.architectures import fingerprint
from hpr.methods import load_method
from hpr.methods.diff import Diff, fit_diff
from hpr.methods.diff_nets import (
    StackedMLP,
    diff_net,
    diff_widths,
    train_stacked,
    training_rows,
    val_cosine,
    val_improvement,
)
from tests.conftest import tiny_llama


def random_diff(model, layers=(1, 2), seed=1, design="mse") -> Diff:
    torch.manual_seed(seed)
    return Diff({i: diff_net(64, design=design) for i in range(4)}, fingerprint(model), list(layers), design=design)


def batch(tokenizer):
    return tokenizer(["Q: hello\nA: world", "Q: hi\nA:  there!"], return_tensors="pt", padding=True)


def records(n: int, offset: int = 0) -> list[Record]:
    return [
        Record(
            id=f"q{i}",
            prompt=f"Is {i} odd?",
            choices=("no" if i % 2 == 0 else "yes", "perhaps so"),
            correct=(0,),
            best=0,
            mc1=(0, 1),
        )
        for i in range(offset, offset + n)
    ]


def test_widths_of_both_designs():
    assert diff_widths(64) == [64, 32, 16, 8, 64]
    assert diff_widths(64, 2, "authors") == [64, 64, 64]
    net = diff_net(64, design="authors")
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "Linear", "Tanh"]
    assert diff_net(64)(torch.zeros(3, 64)).shape == (3, 64)
    with pytest.raises(ParameterError, match="design"):
        diff_net(64, design="paper")


def test_authors_output_is_bounded():
    torch.manual_seed(0)
    x = torch.randn(50, 64) * 1e4
    assert diff_net(64, design="authors")(x).abs().max() <= 1.0
    st = StackedMLP(2, diff_widths(64, 2, "authors"), design="authors")
    assert st(x.expand(2, -1, -1)).abs().max() <= 1.0
    assert diff_net(64)(x).abs().max() > 1.0  # the mse design is unbounded


def _block_io(model, method, tokenizer, layer):
    """Block ``layer``'s output before and after the method's edit, read by hooks around it."""
    seen = {}
    block = model.model.layers[layer]

    def grab(name):
        def hook(_m, _a, o):
            seen[name] = (o[0] if isinstance(o, tuple) else o).detach().clone()

        return hook

    before = block.register_forward_hook(grab("before"))  # registered first: runs before the edit
    with method.apply(model):
        after = block.register_forward_hook(grab("after"))  # registered last: sees the edit
        model(**batch(tokenizer))
    before.remove()
    after.remove()
    return seen["before"], seen["after"]


@pytest.mark.parametrize("layer", [1, 2])
def test_authors_adds_a_unit_vector_at_every_position(tiny_model, tokenizer, layer):
    method = random_diff(tiny_model, design="authors")
    a, edited = _block_io(tiny_model, method, tokenizer, layer)
    norms = (edited - a).norm(dim=-1)
    assert norms.shape == a.shape[:-1] and a.shape[1] > 1
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)


def _net_by_hand(net, a: np.ndarray, design: str) -> np.ndarray:
    """``f(a)`` in float64 numpy from the network's weights: ``mse``: Linear, GELU (erf), ...,
    Linear; ``authors``: tanh after every Linear."""
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    h = a
    for i, lin in enumerate(linears):
        h = h @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
        if design == "authors":
            h = np.tanh(h)
        elif i < len(linears) - 1:
            h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
    return h


@pytest.mark.parametrize("layer", [1, 2])
@pytest.mark.parametrize("design", ["mse", "authors"])
def test_edit_adds_net_output_computed_by_hand(tiny_model, tokenizer, design, layer):
    """The edited block output is ``a + f(a)`` (``mse``) or ``a + f(a) / |f(a)|`` (``authors``),
    with ``f`` evaluated here from the network's weights."""
    method = random_diff(tiny_model, design=design)
    a, edited = _block_io(tiny_model, method, tokenizer, layer)
    a64 = a.double().numpy()
    f = _net_by_hand(method.nets[layer], a64, design)
    if design == "authors":
        f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    expected = a64 + f
    assert np.abs(f).max() > 0.1  # the edit is not negligible next to the tolerance
    np.testing.assert_allclose(edited.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    if design == "mse":
        assert (edited - a).norm(dim=-1).std() > 0  # not a unit vector


def test_apply_restores(tiny_model, tokenizer):
    ids = batch(tokenizer)
    base = tiny_model(**ids).logits
    for design in ("mse", "authors"):
        method = random_diff(tiny_model, design=design)
        with method.apply(tiny_model):
            assert not torch.allclose(tiny_model(**ids).logits, base)
        assert torch.equal(tiny_model(**ids).logits, base)
        with pytest.raises(RuntimeError), method.apply(tiny_model):
            raise RuntimeError("boom")
        assert torch.equal(tiny_model(**ids).logits, base)


def test_batch_edits_every_element(tiny_model, tokenizer):
    method = random_diff(tiny_model, design="authors")
    texts = ["Q: a\nA: b", "Q: ccc\nA: d", "Q: e\nA: ff"]
    tokenizer.padding_side = "right"
    ids = tokenizer(texts, return_tensors="pt", padding=True)
    base = tiny_model(**ids).logits
    with method.apply(tiny_model):
        together = tiny_model(**ids).logits
        for i, t in enumerate(texts):
            alone = tiny_model(**tokenizer([t], return_tensors="pt")).logits[0]
            n = alone.shape[0]
            assert torch.allclose(together[i, :n], alone, atol=1e-5)
            assert not torch.allclose(together[i, :n], base[i, :n])


@pytest.mark.parametrize("design", ["mse", "authors"])
def test_save_load_round_trip_and_mismatch(tiny_model, tokenizer, tmp_path, design):
    ids = batch(tokenizer)
    method = random_diff(tiny_model, design=design)
    method.save(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["design"] == design and cfg["method"] == {"mse": "diff-mse", "authors": "diff"}[design]
    loaded = Diff.load(tmp_path / "d", tiny_model)
    assert loaded.layers == [1, 2] and loaded.design == design
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
    wrong = "diff" if design == "mse" else "diff-mse"
    with pytest.raises(EditorError, match="design"):
        load_method(wrong, tmp_path / "d", tiny_model)


def test_old_folder_without_design_loads_as_mse(tiny_model, tmp_path):
    random_diff(tiny_model).save(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["design"]
    cfg["method"] = "diff"  # what the earlier version wrote
    path.write_text(json.dumps(cfg))
    assert load_method("diff-mse", tmp_path / "old", tiny_model).design == "mse"
    with pytest.raises(EditorError, match="diff-mse"):
        load_method("diff", tmp_path / "old", tiny_model)


@pytest.mark.parametrize("design", ["mse", "authors"])
def test_stacked_unstack_matches(design):
    depth = 4 if design == "mse" else 2
    net = StackedMLP(3, diff_widths(16, depth, design), seed=0, design=design)
    x = torch.randn(3, 5, 16)
    y = net(x)
    for j in range(3):
        assert torch.allclose(net.unstack(j, 16, depth)(x[j]), y[j], atol=1e-5)


def _pairs_data(n=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    neg_x = torch.randn(n, d, generator=g) * 3
    pos_x = neg_x + 0.5 * torch.sign(torch.randn(d, generator=g))
    data = torch.cat([neg_x, pos_x]).unsqueeze(0).repeat(2, 1, 1)  # (L=2, 2n, d)
    return data, torch.arange(n), torch.arange(n, 2 * n)


@pytest.mark.parametrize(
    "design,lambda_p,sees_positives", [("authors", None, False), ("mse", None, True), ("authors", 0.1, True)]
)
def test_which_rows_the_network_sees(monkeypatch, design, lambda_p, sees_positives):
    """The authors' design trains on negatives only (positives enter as targets), unless lambda_p."""
    data, neg, pos = _pairs_data()
    inputs: list[torch.Tensor] = []
    real = StackedMLP.forward

    def recording(self, x):
        inputs.append(x.detach().clone())
        return real(self, x)

    monkeypatch.setattr(StackedMLP, "forward", recording)
    src, tgt = training_rows(neg, pos, design)
    train_stacked(data, src, tgt, epochs=1, batch_size=16, design=design, lambda_p=lambda_p, progress=False)
    rows = torch.cat([x[0] for x in inputs])
    is_pos = (rows.unsqueeze(1) == data[0, pos].unsqueeze(0)).all(-1).any(1)
    is_neg = (rows.unsqueeze(1) == data[0, neg].unsqueeze(0)).all(-1).any(1)
    assert (is_pos | is_neg).all()
    assert bool(is_pos.any()) == sees_positives
    if not sees_positives:
        assert len(src) == len(neg) and torch.equal(src, neg)


def test_authors_loss_ignores_positives_as_inputs():
    """The loss of the authors' design is MSE(f(a_neg), a_pos - a_neg): computed here by hand."""
    data, neg, pos = _pairs_data(n=16)
    net = StackedMLP(2, diff_widths(16, 2, "authors"), seed=0, design="authors")
    x, xt = data[:, neg], data[:, pos]
    with torch.no_grad():
        by_hand = ((net(x) - (xt - x)) ** 2).mean((1, 2))
    imp = val_improvement(net, data, neg, pos)
    base = ((xt - x) ** 2).mean((1, 2))
    torch.testing.assert_close(imp, 1 - by_hand / base)


@pytest.mark.parametrize("design", ["mse", "authors"])
def test_training_learns_synthetic_shift(design):
    data, neg, pos = _pairs_data(n=256, d=32)
    src, tgt = training_rows(neg, pos, design)
    net = train_stacked(data, src, tgt, epochs=20, batch_size=32, lr=3e-3, design=design, progress=False)
    imp = val_improvement(net, data, src, tgt)
    assert imp.shape == (2,) and (imp > 0.5).all()
    if design == "authors":
        assert (val_cosine(net, data, src, tgt) > 0.9).all()


def test_fit_on_tiny_model_picks_layers(tiny_model, tokenizer):
    for design, key in (("mse", "val_mse_improvement"), ("authors", "val_cosine")):
        m = fit_diff(
            model=tiny_model,
            tokenizer=tokenizer,
            train=records(6),
            val=records(3, 50),
            k=2,
            epochs=1,
            progress=False,
            design=design,
        )
        assert len(m.layers) == 2 and sorted(m.nets) == [0, 1, 2, 3] and m.design == design
        score = {int(k): v for k, v in m.config[key].items()}
        assert all(score[i] >= score[j] for i in m.layers for j in score if j not in m.layers)
    assert (m.config["schedule"], m.config["weight_decay"], m.config["grad_clip"]) == ("linear", 0.0, 1.0)
    with pytest.raises(ParameterError, match="training option"):
        fit_diff(
            model=tiny_model,
            tokenizer=tokenizer,
            train=records(6),
            val=records(3, 50),
            training={"momentum": 0.9},
            progress=False,
        )


def test_fit_uses_hpr_layers(tiny_model, tokenizer, tmp_path):
    es = EditorSet({i: HPR(64) for i in range(4)}, fingerprint(tiny_model), selected=[3, 1])
    es.save(tmp_path / "hpr")
    m = fit_diff(
        model=tiny_model,
        tokenizer=tokenizer,
        train=records(4),
        val=[],
        editors_dir=tmp_path / "hpr",
        epochs=1,
        progress=False,
    )
    assert m.layers == [3, 1] and sorted(m.nets) == [1, 3] and m.design == "authors"
    with pytest.raises(ParameterError):
        fit_diff(
            model=tiny_model,
            tokenizer=tokenizer,
            train=records(4),
            val=[],
            layers=[1],
            editors_dir=tmp_path / "hpr",
            progress=False,
        )
