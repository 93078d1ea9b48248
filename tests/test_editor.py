"""The HPR editor and editor sets: editing rules, save/load round trip, and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_llama

from hpr._nn import angle_widths
from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import EditorError
from hpr.householder import angle_between, reflect
from hpr.lm.architectures import fingerprint


def make_set(model: torch.nn.Module, layers=(0, 1, 3), seed: int = 0, angle_input: str = "raw") -> EditorSet:
    torch.manual_seed(seed)
    d = model.config.hidden_size
    acc = {str(i): 0.5 + 0.1 * n for n, i in enumerate(layers)}
    return EditorSet(
        {i: HPR(d, angle_input=angle_input) for i in layers},
        fingerprint(model),
        [layers[-1]],
        {"val_accuracy": acc, "dataset": "tiny", "training": {"lr": 5e-4}},
    )


@pytest.mark.parametrize("angle_input", ["raw", "unit"])
def test_hpr_shapes_and_edit_rules(angle_input: str) -> None:
    torch.manual_seed(0)
    e = HPR(64, angle_input=angle_input)
    assert [m.out_features for m in e.angle if isinstance(m, torch.nn.Linear)] == angle_widths(64, 4)[1:]
    assert angle_widths(64, 4) == [64, 32, 16, 8, 1]
    x = torch.randn(5, 7, 64)
    p, theta = e(x)
    assert p.shape == theta.shape == (5, 7)
    assert bool(((theta > 0) & (theta < math.pi)).all())
    out = e.edit(x)
    neg = p < 0.5
    assert neg.any() and (~neg).any()
    torch.testing.assert_close(out[~neg], x[~neg], rtol=0, atol=0)
    torch.testing.assert_close(angle_between(x[neg], out[neg]), theta[neg], rtol=0, atol=3e-4)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    ablation = HPR(64, use_angle=False, angle_input=angle_input)
    ablation.load_state_dict(e.state_dict())
    torch.testing.assert_close(ablation.edit(x)[neg], reflect(x, e.normal.detach())[neg])
    assert e.edit(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("angle_input", ["raw", "unit"])
def test_save_load_round_trip_bit_exact(tmp_path, tiny_model, tokenizer, angle_input: str) -> None:
    es = make_set(tiny_model, angle_input=angle_input)
    es.save(tmp_path / "ed")
    assert sorted(p.name for p in (tmp_path / "ed").iterdir()) == ["config.json", "model.safetensors"]
    back = EditorSet.load(tmp_path / "ed", model=tiny_model)
    assert back.selected == es.selected and sorted(back.editors) == sorted(es.editors)
    assert back.model == es.model and back.val_accuracy == es.val_accuracy
    assert back.config["dataset"] == "tiny" and back.config["training"] == {"lr": 5e-4}
    assert {e.angle_input for e in back.editors.values()} == {angle_input}
    for i, e in es.editors.items():
        a, b = e.state_dict(), back.editors[i].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    ids = tokenizer(["round trip"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        with es.apply(tiny_model):
            x = tiny_model(ids).logits
        with back.apply(tiny_model):
            y = tiny_model(ids).logits
    assert torch.equal(x, y)
    # Saving again gives the same bytes.
    back.save(tmp_path / "ed2")
    assert (tmp_path / "ed" / "model.safetensors").read_bytes() == (tmp_path / "ed2" / "model.safetensors").read_bytes()


def test_top_and_with_angle(tiny_model) -> None:
    es = make_set(tiny_model)
    top = es.top(2)
    assert top.selected == [3, 1]
    abl = es.top(1, use_angle=False)
    assert abl.selected == [3] and not abl.editors[3].use_angle and abl.config["use_angle"] is False
    assert es.editors[3].use_angle


def test_mismatched_model_refused(tmp_path, tiny_model) -> None:
    es = make_set(tiny_model)
    es.save(tmp_path / "ed")
    deeper = tiny_llama(layers=6)
    with pytest.raises(EditorError, match="trained on"):
        EditorSet.load(tmp_path / "ed", model=deeper)
    with pytest.raises(EditorError, match="trained on"):
        with es.apply(deeper):
            pass
    narrow = tiny_llama(hidden=32)
    with pytest.raises(EditorError, match="hidden-size mismatch"):
        EditorSet.load(tmp_path / "ed", model=narrow)


def test_missing_and_corrupt_files(tmp_path, tiny_model) -> None:
    with pytest.raises(EditorError, match="does not exist"):
        EditorSet.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EditorError, match="config.json is missing"):
        EditorSet.load(tmp_path / "empty")
    make_set(tiny_model).save(tmp_path / "ed")
    weights = tmp_path / "ed" / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(EditorError, match="not a readable safetensors"):
        EditorSet.load(tmp_path / "ed")
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(EditorError, match="not a readable safetensors"):
        EditorSet.load(tmp_path / "ed")
    weights.unlink()
    with pytest.raises(EditorError, match="missing"):
        EditorSet.load(tmp_path / "ed")
    cfg = tmp_path / "ed" / "config.json"
    cfg.write_text("{not json")
    with pytest.raises(EditorError, match="not valid JSON"):
        EditorSet.load(tmp_path / "ed")


def test_invalid_config_and_shape_mismatch(tmp_path, tiny_model) -> None:
    make_set(tiny_model).save(tmp_path / "ed")
    cfg_path = tmp_path / "ed" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    bad = {**cfg, "selected": [2]}
    cfg_path.write_text(json.dumps(bad))
    with pytest.raises(EditorError, match="selected names a layer without an editor"):
        EditorSet.load(tmp_path / "ed")
    cfg_path.write_text(json.dumps({**cfg, "hidden_size": 32}))
    with pytest.raises(EditorError, match="do not fit an editor of hidden size 32"):
        EditorSet.load(tmp_path / "ed")
    cfg_path.write_text(json.dumps({**cfg, "editors": {"0": {"angle_layers": 99, "use_angle": True}}}))
    with pytest.raises(EditorError, match="angle_layers"):
        EditorSet.load(tmp_path / "ed")


def test_empty_and_inconsistent_sets_refused(tiny_model) -> None:
    with pytest.raises(EditorError, match="at least one layer"):
        EditorSet({}, fingerprint(tiny_model))
    with pytest.raises(EditorError, match="no trained editor"):
        EditorSet({0: HPR(64)}, fingerprint(tiny_model), [1])
    with pytest.raises(EditorError, match="angle_layers"):
        HPR(64, angle_layers=0)


def test_unit_angle_input_reads_direction_only() -> None:
    """``hpr-unit``'s angle network sees sqrt(d) x / |x|: scaling x leaves theta unchanged, while
    the paper's network (raw input) saturates for large norms (Gemma-3's residual stream)."""
    torch.manual_seed(1)
    raw, unit = HPR(64), HPR(64, angle_input="unit")
    unit.load_state_dict(raw.state_dict())
    x = torch.randn(20, 64)
    with torch.no_grad():
        torch.testing.assert_close(unit.theta(1000 * x), unit.theta(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(unit.theta(x), raw.theta(8 * x / x.norm(dim=-1, keepdim=True)))
        assert not torch.allclose(raw.theta(1000 * x), raw.theta(x), atol=1e-3)
        # The edit itself still rotates by theta and keeps the norm.
        out = unit.edit(1000 * x)
        neg = unit.logits(x) < 0
        torch.testing.assert_close(angle_between(1000 * x[neg], out[neg]), unit.theta(x)[neg], rtol=0, atol=3e-4)
        torch.testing.assert_close(out.norm(dim=-1), (1000 * x).norm(dim=-1))


def test_bad_angle_input_refused(tmp_path, tiny_model) -> None:
    with pytest.raises(EditorError, match="angle_input"):
        HPR(8, angle_input="unitary")
    es = make_set(tiny_model, angle_input="unit")
    es.save(tmp_path / "u")
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    assert all(spec["angle_input"] == "unit" for spec in cfg["editors"].values())
    next(iter(cfg["editors"].values()))["angle_input"] = "bogus"
    (tmp_path / "u" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EditorError, match="angle_input must be one of"):
        EditorSet.load(tmp_path / "u")


def test_methods_refuse_the_other_angle_input(tmp_path, tiny_model) -> None:
    from hpr.methods import load_method

    make_set(tiny_model, angle_input="unit").save(tmp_path / "u")
    make_set(tiny_model).save(tmp_path / "r")
    assert {e.angle_input for e in load_method("hpr-unit", tmp_path / "u", tiny_model).editors.values()} == {"unit"}
    with pytest.raises(EditorError, match="load it as 'hpr-unit'"):
        load_method("hpr", tmp_path / "u", tiny_model)
    with pytest.raises(EditorError, match="load it as 'hpr'"):
        load_method("hpr-unit", tmp_path / "r", tiny_model)
