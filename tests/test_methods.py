"""The one method interface: load_method / fit_method for every row of Table 1."""

from __future__ import annotations

import pytest
import torch

from hpr.data.records import Record
from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import EditorError, ParameterError
from hpr.lm.architectures import fingerprint
from hpr.methods import METHOD_NAMES, EditMethod, MethodSpec, Unedited, fit_method, load_method, parse_method


def records(n: int, offset: int = 0) -> list[Record]:
    return [
        Record(
            id=f"q{i}",
            prompt=f"Is {i} odd?",
            choices=("no" if i % 2 == 0 else "yes", "perhaps"),
            correct=(0,),
            best=0,
            mc1=(0, 1),
        )
        for i in range(offset, offset + n)
    ]


def batch(tokenizer):
    return tokenizer(["Q: hello\nA: world", "Q: hi\nA:  there!"], return_tensors="pt", padding=True)


def test_names():
    assert METHOD_NAMES == ("base", "hpr", "hpr-noangle", "iti", "diff", "diff-mse", "lora", "hpr-unit")


@pytest.mark.parametrize(
    "name,family,load,fit,uses_k,canon",
    [
        ("base", "base", {}, {}, False, "base"),
        ("hpr", "hpr", {}, {}, True, "hpr"),
        ("hpr-noangle", "hpr-noangle", {}, {}, True, "hpr-noangle"),
        ("hpr-unit", "hpr-unit", {}, {}, True, "hpr-unit"),
        ("diff", "diff", {}, {}, True, "diff"),
        ("diff-mse", "diff-mse", {}, {}, True, "diff-mse"),
        ("lora", "lora", {}, {}, False, "lora"),
        ("iti", "iti", {"alpha": 15.0}, {}, False, "iti"),
        ("iti-15", "iti", {"alpha": 15.0}, {}, False, "iti"),
        ("iti-200", "iti", {"alpha": 200.0}, {}, False, "iti-200"),
        ("iti-k48", "iti", {"alpha": 15.0, "k": 48}, {}, False, "iti-k48"),
        ("iti-200-k48", "iti", {"alpha": 200.0, "k": 48}, {}, False, "iti-200-k48"),
        ("iti-2.5-k3", "iti", {"alpha": 2.5, "k": 3}, {}, False, "iti-2.5-k3"),
    ],
)
def test_parse_method(name, family, load, fit, uses_k, canon):
    spec = parse_method(name)
    assert isinstance(spec, MethodSpec)
    assert (spec.family, spec.load_options, spec.fit_options, spec.uses_k, spec.name) == (
        family,
        load,
        fit,
        uses_k,
        canon,
    )


def test_iti_15_is_iti():
    assert parse_method("iti-15") == parse_method("iti")
    assert parse_method("iti-200") != parse_method("iti")


@pytest.mark.parametrize(
    "bad,match",
    [
        ("rome", "valid methods"),
        ("iti-", "iti\\[-<alpha>\\]"),
        ("iti-k", "iti-k48"),
        ("iti-k0", "at least 1"),
        ("iti-k48-200", "iti-200-k48"),
        ("iti-abc", "iti-200"),
        ("HPR", "valid methods"),
        ("", "valid methods"),
    ],
)
def test_parse_method_errors(bad, match):
    with pytest.raises(ParameterError, match=match):
        parse_method(bad)


def test_unknown_method_lists_valid_names(tiny_model):
    with pytest.raises(ParameterError, match="hpr-noangle"):
        load_method("rome", None, tiny_model)
    with pytest.raises(ParameterError):
        fit_method("hpr", model=tiny_model, tokenizer=None, train=records(1), val=[], out="x")


def test_base_is_identity(tiny_model, tokenizer):
    ids = batch(tokenizer)
    m = load_method("base", None, tiny_model)
    assert isinstance(m, Unedited) and isinstance(m, EditMethod)
    base = tiny_model(**ids).logits
    with m.apply(tiny_model):
        assert torch.equal(tiny_model(**ids).logits, base)


def test_hpr_and_noangle(tiny_model, tokenizer, tmp_path):
    torch.manual_seed(0)
    EditorSet({i: HPR(64) for i in range(4)}, fingerprint(tiny_model), selected=[1, 2]).save(tmp_path / "h")
    ids = batch(tokenizer)
    base = tiny_model(**ids).logits
    hpr = load_method("hpr", tmp_path / "h", tiny_model)
    noangle = load_method("hpr-noangle", tmp_path / "h", tiny_model)
    assert all(e.use_angle for e in hpr.editors.values())
    assert not any(e.use_angle for e in noangle.editors.values())
    assert noangle.selected == hpr.selected == [1, 2]
    with hpr.apply(tiny_model):
        a = tiny_model(**ids).logits
    with noangle.apply(tiny_model):
        b = tiny_model(**ids).logits
    assert not torch.allclose(a, base) and not torch.allclose(b, base) and not torch.allclose(a, b)
    assert torch.equal(tiny_model(**ids).logits, base)


@pytest.mark.parametrize(
    "name,options",
    [
        ("iti", {"k": 2}),
        ("diff", {"k": 2, "epochs": 1}),
        ("diff-mse", {"k": 2, "epochs": 1}),
        ("lora", {"max_steps": 2, "lr": 5e-2}),
    ],
)
def test_fit_save_load_every_baseline(name, options, tiny_model, tokenizer, tmp_path):
    from tests.conftest import tiny_llama

    ids = batch(tokenizer)
    base = tiny_model(**ids).logits
    fitted = fit_method(
        name,
        model=tiny_model,
        tokenizer=tokenizer,
        train=records(6),
        val=records(3, 40),
        out=tmp_path / name,
        progress=False,
        **options,
    )
    assert (tmp_path / name / "config.json").is_file()
    assert not list((tmp_path / name).glob("*.pt")) and not list((tmp_path / name).glob("*.bin"))
    loaded = load_method(name, tmp_path / name, tiny_model)
    with fitted.apply(tiny_model):
        a = tiny_model(**ids).logits
    with loaded.apply(tiny_model):
        b = tiny_model(**ids).logits
    assert torch.equal(a, b) and not torch.equal(a, base)
    assert torch.equal(tiny_model(**ids).logits, base)
    with pytest.raises(EditorError):
        load_method(name, tmp_path / name, tiny_llama(layers=3))
    for other in {"iti": ["diff"], "diff": ["iti", "diff-mse"], "diff-mse": ["iti", "diff"]}.get(name, ["iti"]):
        with pytest.raises(EditorError):
            load_method(other, tmp_path / name, tiny_model)


def test_iti_alpha_override(tiny_model, tokenizer, tmp_path):
    fit_method(
        "iti",
        model=tiny_model,
        tokenizer=tokenizer,
        train=records(6),
        val=records(3, 40),
        out=tmp_path / "iti",
        k=1,
        progress=False,
    )
    assert load_method("iti", tmp_path / "iti", tiny_model, alpha=200.0).alpha == 200.0
    assert load_method("iti", tmp_path / "iti", tiny_model).alpha == 15.0


@pytest.mark.slow
def test_iti_and_norms_on_smollm2(tmp_path):
    """End to end on the embedded SmolLM2 (GQA: 9 query heads of width 64, 3 KV heads)."""
    from hpr.evaluation.norms import norm_divergence
    from hpr.lm.models import load_model
    from hpr.methods.iti_heads import head_dim

    model, tok = load_model("smollm2-135m-instruct")
    assert head_dim(model) == 64
    fitted = fit_method(
        "iti", model=model, tokenizer=tok, train=records(4), val=records(2, 40), out=tmp_path / "iti", progress=False
    )
    assert len(fitted.heads) == 13  # 270 heads x 48/1024
    ids = tok(["Q: Is the sky blue?\nA: Yes."], return_tensors="pt")
    base = model(**ids).logits
    with load_method("iti", tmp_path / "iti", model, alpha=200.0).apply(model):
        edited = model(**ids).logits
    assert not torch.allclose(base, edited)
    assert torch.equal(model(**ids).logits, base)
    stats = norm_divergence(fitted, model, tok, ["Q: Why?\nA: Because."], progress=False)
    assert set(stats.ratios) == set(fitted.layers)


def test_load_options_only_for_iti(tiny_model, tmp_path):
    with pytest.raises(ParameterError, match="alpha"):
        load_method("diff", tmp_path, tiny_model, alpha=3.0)
    with pytest.raises(ParameterError, match="takes the load options: alpha, k"):
        load_method("iti", tmp_path, tiny_model, heads=3)


def test_parsed_names_fit_and_load(tiny_model, tokenizer, tmp_path):
    """``fit_options`` go to fit_method, ``load_options`` to load_method: one ITI fit ranks every
    head, so ``iti``, ``iti-200`` and ``iti-200-k2`` load the same artifact with other heads/alpha."""
    spec = parse_method("iti-200-k2")
    assert spec.fit_options == {}
    fit_method(
        spec.family,
        model=tiny_model,
        tokenizer=tokenizer,
        train=records(6),
        val=records(3, 40),
        out=tmp_path / "iti",
        progress=False,
        **spec.fit_options,
    )
    m = load_method(spec.family, tmp_path / "iti", tiny_model, **spec.load_options)
    assert len(m.heads) == 2 and m.alpha == 200.0
    default = load_method("iti", tmp_path / "iti", tiny_model, **parse_method("iti").load_options)
    n = len(default.heads)
    assert n == default.config["k"] and m.heads[:n] == default.heads
    assert torch.equal(m.directions[:n], default.directions) and torch.equal(m.sigmas[:n], default.sigmas)
    with pytest.raises(ParameterError, match="out of range"):
        load_method("iti", tmp_path / "iti", tiny_model, k=10_000)
    with pytest.raises(ParameterError, match="design"):
        fit_method(
            "diff-mse",
            model=tiny_model,
            tokenizer=tokenizer,
            train=records(6),
            val=records(3, 40),
            out=tmp_path / "d",
            design="authors",
            progress=False,
        )


def test_registry_is_the_one_method_list() -> None:
    """Every method family is in the registry, with its kind, loader and (for baselines) fitter; the
    derived lists and the CLI's help come from it."""
    from hpr.methods import FITTABLE, HPR_FAMILY, REGISTRY, USES_K, method_info, methods_help

    assert set(REGISTRY) == set(METHOD_NAMES)
    assert FITTABLE == ("iti", "diff", "diff-mse", "lora") and HPR_FAMILY == ("hpr", "hpr-noangle", "hpr-unit")
    assert set(USES_K) == {"hpr", "hpr-noangle", "hpr-unit", "diff", "diff-mse"}
    assert all((m.fit is None) == (m.kind != "baseline") for m in REGISTRY.values())
    assert all(name in methods_help() for name in METHOD_NAMES)
    with pytest.raises(ParameterError, match="valid methods: base, hpr"):
        method_info("steer")


def test_cli_train_refuses_hpr_options_for_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    from hpr.cli import main

    assert (
        main(
            [
                "train",
                "--model",
                "x",
                "--dataset",
                "truthfulqa",
                "--out",
                "o",
                "--method",
                "iti",
                "--k",
                "3",
                "--epochs",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--k, --epochs set(s) HPR training, not 'iti'" in err
