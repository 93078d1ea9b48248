"""Training all layers at once: correctness of the stacked editors, determinism, selection, CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hpr.train as train_mod
from hpr._nn import clip_grad_norm_per_layer, lr_schedule
from hpr.cli import main as cli_main
from hpr.data.records import Record
from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import DataError, ParameterError
from hpr.householder import angle_between
from hpr.lm.capture import Captured
from hpr.train import TRAIN_PRESETS, StackedHPR, TrainConfig, evaluate, pair_targets, train, train_from_model


def synthetic(
    layers=(0, 1, 2), d: int = 16, questions: int = 12, seed: int = 0, signal: tuple[float, ...] = (0.0, 1.0, 3.0)
) -> Captured:
    """Per question 2 positive and 3 negative answers of 4 tokens; layer j separates by signal[j]."""
    g = torch.Generator().manual_seed(seed)
    label, question, sequence, position = [], [], [], []
    s = 0
    for q in range(questions):
        for lab in (1, 1, 0, 0, 0):
            for p in range(4):
                label.append(lab)
                question.append(q)
                sequence.append(s)
                position.append(p)
            s += 1
    n = len(label)
    lab_t = torch.tensor(label)
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    data = torch.randn(len(layers), n, d, generator=g)
    for j in range(len(layers)):
        data[j] += signal[j] * (2 * lab_t.float() - 1).unsqueeze(-1) * direction
    return Captured(
        data,
        list(layers),
        lab_t,
        torch.tensor(question),
        torch.tensor(sequence),
        torch.tensor(position),
        torch.arange(n),
        {"dataset": "synthetic", "model": {"name": "toy", "hidden_size": d}},
    )


@pytest.mark.parametrize("angle_input", ["raw", "unit"])
def test_stacked_forward_and_export_match_hpr(angle_input: str) -> None:
    torch.manual_seed(0)
    eds = [HPR(32, angle_input=angle_input) for _ in range(3)]
    st = StackedHPR(eds)
    x = torch.randn(3, 10, 32)
    logits, theta = st(x)
    for j, e in enumerate(eds):
        p, t = e(x[j])
        torch.testing.assert_close(torch.sigmoid(logits[j]), p, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(theta[j], t, rtol=1e-5, atol=1e-6)
        back = st.export(j, e)
        assert back.angle_input == angle_input
        for k, v in e.state_dict().items():
            assert torch.equal(back.state_dict()[k], v)


def test_train_learns_separable_layers_and_selects_them() -> None:
    tr, va = synthetic(seed=0), synthetic(seed=0, questions=6)
    va = Captured(
        va.data + 0.01 * torch.randn_like(va.data),
        va.layers,
        va.label,
        va.question,
        va.sequence,
        va.position,
        va.token,
        va.meta,
    )
    es = train(tr, va, epochs=4, k=2, lr=1e-2, progress=False)
    acc = es.val_accuracy
    assert acc[2] > 0.95 and acc[1] > 0.75 and acc[0] < 0.75
    assert es.selected == [2, 1]
    cfg = es.config
    assert cfg["val_source"] == "val" and cfg["training"]["epochs"] == 4 and cfg["k"] == 2
    assert cfg["train_pairs"] == 12 * 6 * 4 and cfg["val_pairs"] == 6 * 6 * 4
    assert set(cfg["loss_history"]) == {"0", "1", "2"} and len(cfg["loss_history"]["2"]) == 4
    assert cfg["loss_history"]["2"][-1] < cfg["loss_history"]["2"][0]
    # val_angle_error by hand: over the val pairs (each negative answer of a question with each
    # positive one, position by position), mean of |theta(a_neg) - angle(a_neg, a_pos)| and |theta(a_pos)|
    neg, pos = [], []
    seq, lab, q = va.sequence.numpy(), va.label.numpy(), va.question.numpy()
    for question in np.unique(q):
        seqs = {int(s_): int(lab[seq == s_][0]) for s_ in np.unique(seq[q == question])}
        for sn in (s_ for s_, y in seqs.items() if y == 0):
            for sp in (s_ for s_, y in seqs.items() if y == 1):
                neg += np.flatnonzero(seq == sn).tolist()
                pos += np.flatnonzero(seq == sp).tolist()
    assert len(neg) == cfg["val_pairs"]
    for j, layer in enumerate(va.layers):
        xn, xp = va.data[j, neg].double().numpy(), va.data[j, pos].double().numpy()
        cos = (xn * xp).sum(-1) / (np.linalg.norm(xn, axis=-1) * np.linalg.norm(xp, axis=-1))
        target = np.arccos(np.clip(cos, -1.0, 1.0))
        with torch.no_grad():
            tn = es.editors[layer].theta(torch.from_numpy(xn).float()).double().numpy()
            tp = es.editors[layer].theta(torch.from_numpy(xp).float()).double().numpy()
        want = (np.abs(tn - target).mean() + np.abs(tp).mean()) / 2
        assert cfg["val_angle_error"][str(layer)] == pytest.approx(want, rel=1e-4)
    assert es.model == {"name": "toy", "hidden_size": 16}


def _scaled(cap: Captured, factor: float) -> Captured:
    return Captured(
        cap.data * factor, cap.layers, cap.label, cap.question, cap.sequence, cap.position, cap.token, cap.meta
    )


def test_training_is_deterministic_and_layers_independent() -> None:
    # Large activations: gradient norms far above 1, so the per-layer clipping is active.
    cap = _scaled(synthetic(), 20.0)
    kw = {"epochs": 2, "progress": False, "keep": "last", "grad_clip": 1.0}
    a = train(cap, None, seed=3, **kw)
    b = train(cap, None, seed=3, **kw)
    c = train(cap, None, seed=4, **kw)
    for layer in cap.layers:
        sa, sb = a.editors[layer].state_dict(), b.editors[layer].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.editors[0].normal, c.editors[0].normal)
    assert a.config["val_source"] == "train"
    unclipped = train(cap, None, seed=3, **{**kw, "grad_clip": None})
    assert not torch.allclose(a.editors[0].normal, unclipped.editors[0].normal, atol=1e-4)
    # Changing layer 1's data leaves layer 0's training (same batches, same init, own clipping) unchanged.
    data = cap.data.clone()
    data[1] = 50 * torch.randn_like(data[1])
    other = Captured(data, cap.layers, cap.label, cap.question, cap.sequence, cap.position, cap.token, cap.meta)
    d = train(other, None, seed=3, **kw)
    s0, d0 = a.editors[0].state_dict(), d.editors[0].state_dict()
    assert all(torch.allclose(s0[k], d0[k], rtol=1e-5, atol=1e-6) for k in s0)
    assert not torch.equal(a.editors[1].normal, d.editors[1].normal)


def test_stacked_clipped_steps_equal_independent_trainings() -> None:
    """Per-layer clipping + AdamW on the stack == torch's clip_grad_norm_ + AdamW on each layer alone."""
    torch.manual_seed(0)
    eds = [HPR(8) for _ in range(3)]
    st = StackedHPR(eds)
    opt = torch.optim.AdamW(st.parameters(), lr=1e-2, weight_decay=0.0)
    solo = [torch.optim.AdamW(e.parameters(), lr=1e-2, weight_decay=0.0) for e in eds]
    label = torch.tensor([0.0, 0, 0, 1, 1, 1])
    tgt = torch.tensor([0.3, 0.5, 1.0, 0, 0, 0])
    g = torch.Generator().manual_seed(1)
    clipped = 0
    for _ in range(4):
        x = torch.randn(3, 6, 8, generator=g) * torch.tensor([30.0, 0.1, 5.0]).view(3, 1, 1)
        logits, theta = st(x)
        loss = (
            F.binary_cross_entropy_with_logits(logits, label.expand(3, -1), reduction="none").mean(1)
            + ((theta - tgt) ** 2).mean(1)
        ).sum()
        opt.zero_grad()
        loss.backward()
        norms = clip_grad_norm_per_layer(list(st.parameters()), 1.0)
        opt.step()
        for j, (e, o) in enumerate(zip(eds, solo, strict=True)):
            own = F.binary_cross_entropy_with_logits(e.logits(x[j]), label) + ((e.theta(x[j]) - tgt) ** 2).mean()
            o.zero_grad()
            own.backward()
            n = torch.nn.utils.clip_grad_norm_(e.parameters(), 1.0)
            torch.testing.assert_close(norms[j], n, rtol=1e-4, atol=1e-6)
            clipped += int(n > 1.0)
            o.step()
    assert clipped > 0  # clipping was active (with a global norm the layers would not match)
    for j, e in enumerate(eds):
        back = st.export(j, e)
        for k, v in e.state_dict().items():
            torch.testing.assert_close(back.state_dict()[k], v, rtol=1e-4, atol=1e-5)


def test_linear_schedule_matches_transformers() -> None:
    total, warm = 40, 0.05
    f = lr_schedule("linear", total, warm)
    expected = [s / 2 if s < 2 else (total - s) / (total - 2) for s in range(total + 1)]  # ceil(0.05 * 40) = 2
    assert [f(s) for s in range(total + 1)] == pytest.approx(expected)
    try:
        from transformers import get_linear_schedule_with_warmup
    except ImportError:
        return
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for total in (7, 33, 100):
        hf = get_linear_schedule_with_warmup(opt, math.ceil(warm * total), total).lr_lambdas[0]
        ours = lr_schedule("linear", total, warm)
        assert [ours(s) for s in range(total)] == pytest.approx([hf(s) for s in range(total)])
    c = lr_schedule("cosine", 40, warm)
    assert c(0) == pytest.approx(0.5) and c(1) == pytest.approx(1.0) and c(40) == pytest.approx(0.0)
    with pytest.raises(ParameterError, match="schedule"):
        lr_schedule("step", 10)


def test_defaults_are_the_authors_and_presets() -> None:
    cfg = TrainConfig()
    assert (cfg.schedule, cfg.weight_decay, cfg.grad_clip, cfg.keep) == ("linear", 0.0, 1.0, "best")
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.warmup) == (5e-4, 5, 16, 0.05)
    assert TRAIN_PRESETS["authors"] == cfg
    cos = TrainConfig.preset("cosine", epochs=2)
    assert (cos.schedule, cos.weight_decay, cos.grad_clip, cos.keep, cos.epochs) == ("cosine", 0.01, None, "last", 2)
    with pytest.raises(ParameterError, match="preset"):
        TrainConfig.preset("paper")
    for bad in ({"schedule": "step"}, {"keep": "first"}, {"grad_clip": 0.0}, {"weight_decay": -1.0}):
        with pytest.raises(ParameterError):
            TrainConfig(**bad).check()


def test_keep_best_restores_the_best_epoch(monkeypatch) -> None:
    cap = synthetic()
    scripted = [0.5, 0.9, 0.6]
    states: list[dict[str, torch.Tensor]] = []
    real = train_mod.probe_accuracy

    def fake(model, c, threshold=0.75, chunk=2048):
        if len(states) < len(scripted):
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return torch.full((len(c.layers),), scripted[len(states) - 1])
        return real(model, c, threshold, chunk)

    monkeypatch.setattr(train_mod, "probe_accuracy", fake)
    es = train(cap, None, epochs=3, lr=1e-2, progress=False)
    assert es.config["best_epoch"] == 2 and es.config["epoch_val_accuracy"] == pytest.approx(scripted)
    for j, layer in enumerate(cap.layers):
        assert torch.equal(es.editors[layer].normal, states[1]["probe"][j])
        assert not torch.equal(es.editors[layer].normal, states[2]["probe"][j])
    monkeypatch.setattr(train_mod, "probe_accuracy", real)
    last = train(cap, None, epochs=3, lr=1e-2, progress=False, keep="last")
    assert last.config["best_epoch"] == 3 and last.config["epoch_val_accuracy"] is None


def test_stacked_step_equals_separate_losses() -> None:
    """The summed loss gives each layer the gradient of its own loss."""
    torch.manual_seed(0)
    eds = [HPR(8) for _ in range(2)]
    st = StackedHPR(eds)
    x = torch.randn(2, 6, 8)
    label = torch.tensor([0.0, 0, 0, 1, 1, 1])
    tgt = torch.tensor([0.3, 0.5, 1.0, 0, 0, 0])
    logits, theta = st(x)
    loss = (
        F.binary_cross_entropy_with_logits(logits, label.expand(2, -1), reduction="none").mean(1)
        + ((theta - tgt) ** 2).mean(1)
    ).sum()
    loss.backward()
    for j, e in enumerate(eds):
        p, t = e(x[j])
        own = F.binary_cross_entropy(p, label) + ((t - tgt) ** 2).mean()
        own.backward()
        torch.testing.assert_close(st.probe.grad[j], e.probe.weight.grad[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(st.weights[0].grad[j], e.angle[0].weight.grad.T, rtol=1e-4, atol=1e-6)


def test_pair_targets_and_evaluate_shapes() -> None:
    cap = synthetic()
    neg, pos = cap.pairs()
    t = pair_targets(cap, neg, pos, chunk=7)
    assert t.shape == (3, len(neg))
    torch.testing.assert_close(t[1], angle_between(cap.data[1, neg], cap.data[1, pos]))
    torch.manual_seed(0)
    m = evaluate(StackedHPR([HPR(16) for _ in range(3)]), cap)
    assert set(m) == {"accuracy", "angle_error", "loss"} and m["accuracy"].shape == (3,)


def test_bad_parameters_and_data() -> None:
    cap = synthetic()
    with pytest.raises(ParameterError, match="lr must be > 0"):
        train(cap, None, lr=0.0, progress=False)
    with pytest.raises(ParameterError, match="epochs"):
        TrainConfig(epochs=0).check()
    with pytest.raises(ParameterError, match="different layers"):
        train(cap, cap.subset_layers([0]), progress=False)
    only_pos = Captured(
        cap.data, cap.layers, torch.ones_like(cap.label), cap.question, cap.sequence, cap.position, cap.token, cap.meta
    )
    with pytest.raises(DataError, match="no pairs"):
        train(only_pos, None, progress=False)


RECORDS = [
    Record("a", "Is the sky blue?", ("Yes", "No", "Green"), (0,)),
    Record("b", "What is 2+2?", ("4", "5", "four", "22"), (0, 2)),
    Record("c", "Capital of France?", ("Paris", "Lyon"), (0,)),
    Record("d", "Does ice float?", ("Yes", "No"), (0,)),
]


def test_train_from_model_on_tiny_model(tiny_model, tokenizer, tmp_path) -> None:
    es = train_from_model(
        tiny_model, tokenizer, RECORDS[:3], RECORDS[3:], k=2, epochs=1, progress=False, dataset="tiny"
    )
    assert sorted(es.editors) == [0, 1, 2, 3] and len(es.selected) == 2
    assert es.config["dataset"] == "tiny" and es.config["val_source"] == "val"
    es.save(tmp_path / "ed")
    back = EditorSet.load(tmp_path / "ed", model=tiny_model)
    ids = tokenizer(["Is the sky blue?"], return_tensors="pt")["input_ids"]
    with back.apply(tiny_model):
        out = tiny_model(ids).logits
    assert torch.isfinite(out).all()
    sub = train_from_model(tiny_model, tokenizer, RECORDS[:3], None, layers=[1, 3], k=5, epochs=1, progress=False)
    assert sorted(sub.editors) == [1, 3] and sorted(sub.selected) == [1, 3]


def _truthfulqa_csv(path) -> None:
    rows = [
        ("Is the sky blue?", "Yes", "Yes; It is blue", "No; It is green"),
        ("What is 2+2?", "4", "4; Four", "5; 22"),
        ("Capital of France?", "Paris", "Paris", "Lyon; Nice"),
        ("Does ice float?", "Yes", "Yes", "No"),
        ("Is water wet?", "Yes", "Yes", "No"),
        ("Cats bark?", "No", "No", "Yes"),
        ("Sun is a star?", "Yes", "Yes", "No"),
        ("Fish fly?", "No", "No", "Yes"),
        ("Snow is cold?", "Yes", "Yes", "No"),
        ("Moon is cheese?", "No", "No", "Yes"),
    ]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"])
        for q, best, good, bad in rows:
            w.writerow(["Adversarial", "Misc", q, best, good, bad, "x"])


def test_cli_train(tiny_model, tokenizer, tmp_path, capsys) -> None:
    ckpt = tmp_path / "tiny"
    tiny_model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    _truthfulqa_csv(tmp_path / "TruthfulQA.csv")

    def argv(out, *extra: str) -> list[str]:
        return [
            "train",
            "--model",
            str(ckpt),
            "--dataset",
            "truthfulqa",
            "--out",
            str(out),
            "--k",
            "2",
            "--epochs",
            "1",
            "--source",
            "local",
            "--data-dir",
            str(tmp_path / "TruthfulQA.csv"),
            *extra,
        ]

    assert cli_main(argv(tmp_path / "run")) == 0
    text = capsys.readouterr().out
    assert "selected layers (top 2)" in text and "val_acc" in text
    es = EditorSet.load(tmp_path / "run")
    assert len(es.selected) == 2 and es.config["method"] == "hpr"
    assert cli_main(argv(tmp_path / "abl", "--method", "hpr-noangle")) == 0
    abl = EditorSet.load(tmp_path / "abl")
    assert not any(e.use_angle for e in abl.editors.values()) and abl.config["method"] == "hpr-noangle"
    assert cli_main(argv(tmp_path / "bad", "--k", "0")) == 2
    assert "--k must be at least 1" in capsys.readouterr().err
