"""Norm divergence: rotations keep norms, additive edits change them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import ParameterError
from hpr.evaluation.norms import edited_layers, norm_divergence
from hpr.lm.architectures import fingerprint
from hpr.methods import Unedited
from hpr.methods.diff import Diff
from hpr.methods.diff_nets import diff_net
from hpr.methods.iti import ITI

PROMPTS = ["Q: hello\nA: world", "Q: hi\nA: there", "Q: what?\nA: this one"]


def hpr_set(model) -> EditorSet:
    torch.manual_seed(0)
    return EditorSet({i: HPR(64) for i in range(4)}, fingerprint(model), selected=[2, 1])


def test_hpr_preserves_norms(tiny_model, tokenizer):
    stats = norm_divergence(hpr_set(tiny_model), tiny_model, tokenizer, PROMPTS, progress=False)
    assert sorted(stats.ratios) == [1, 2]
    n_tokens = int(tokenizer(PROMPTS, padding=True, return_tensors="pt")["attention_mask"].sum())
    r = stats.ratios[1]
    assert r.shape == (n_tokens,)
    # Layer 1 is the first edit: exactly norm-preserving up to float error.
    assert torch.allclose(r, torch.ones_like(r), atol=1e-5)
    s = stats.summary()
    assert set(s["layers"]) == {"1", "2"} and abs(s["layers"]["1"]["median"] - 1) < 1e-5
    assert s["all"]["n"] == 2 * n_tokens


def test_additive_edit_changes_norms(tiny_model, tokenizer):
    torch.manual_seed(0)
    diff = Diff({1: diff_net(64)}, fingerprint(tiny_model), [1])
    stats = norm_divergence(diff, tiny_model, tokenizer, PROMPTS, progress=False)
    assert not torch.allclose(stats.ratios[1], torch.ones_like(stats.ratios[1]), atol=1e-3)
    assert torch.all(stats.original[1] > 0)


def test_iti_measures_layers_with_heads(tiny_model, tokenizer):
    iti = ITI(
        [(2, 0), (2, 3), (0, 1)],
        torch.nn.functional.normalize(torch.randn(3, 16), dim=-1),
        torch.ones(3),
        fingerprint(tiny_model),
        4,
        16,
        alpha=15.0,
    )
    assert edited_layers(iti, tiny_model) == [0, 2]
    stats = norm_divergence(iti, tiny_model, tokenizer, PROMPTS, progress=False)
    # By hand: block outputs of each prompt alone (no padding), without and with the edit.
    blocks = tiny_model.model.layers
    norms: dict[str, dict[int, list[np.ndarray]]] = {"original": {0: [], 2: []}, "edited": {0: [], 2: []}}

    def run(kind: str) -> None:
        hooks = [
            blocks[i].register_forward_hook(
                lambda _m, _a, o, i=i: norms[kind][i].append(
                    np.linalg.norm((o[0] if isinstance(o, tuple) else o)[0].double().numpy(), axis=-1)
                )
            )
            for i in (0, 2)
        ]
        try:
            with torch.no_grad():
                for p in PROMPTS:
                    tiny_model(**tokenizer([p], return_tensors="pt"))
        finally:
            for h in hooks:
                h.remove()

    run("original")
    with iti.apply(tiny_model):
        run("edited")
    summary = stats.summary()["layers"]
    for i in (0, 2):
        ratio = np.concatenate(norms["edited"][i]) / np.concatenate(norms["original"][i])
        assert abs(np.median(ratio) - 1.0) > 1e-3  # the additive edit changes the norms
        got = summary[str(i)]
        assert got["n"] == len(ratio)
        for key, q in (("p05", 0.05), ("median", 0.5), ("p95", 0.95)):
            assert got[key] == pytest.approx(float(np.quantile(ratio, q)), rel=1e-5), key


def test_base_edits_nothing(tiny_model, tokenizer):
    assert edited_layers(Unedited(), tiny_model) == []
    with pytest.raises(ParameterError):
        norm_divergence(Unedited(), tiny_model, tokenizer, PROMPTS, progress=False)
    stats = norm_divergence(Unedited(), tiny_model, tokenizer, PROMPTS, layers=[0], progress=False)
    assert torch.equal(stats.ratios[0], torch.ones_like(stats.ratios[0]))


def test_test_prompts():
    from hpr.data.records import Record
    from hpr.evaluation.norms import test_prompts

    recs = [
        Record(id="a", prompt="Why?", choices=("x", "y"), correct=(1,), best=1),
        Record(id="b", prompt="How?", choices=("u", "v"), correct=(0,)),
    ]
    assert test_prompts(recs) == ["Q: Why?\nA: y", "Q: How?\nA: u"]
    assert test_prompts(recs, limit=1) == ["Q: Why?\nA: y"]
