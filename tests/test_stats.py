"""Paired statistics: McNemar's exact test, the paired bootstrap, and comparing prediction files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hpr.errors import DataError, ParameterError
from hpr.evaluation.stats import compare, compare_methods, mcnemar, paired_bootstrap


def test_mcnemar_hand_computed():
    # a right / b wrong on 5 questions, the reverse on 1, 4 concordant.
    a = [1, 1, 1, 1, 1, 0, 1, 1, 0, 0]
    b = [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    out = mcnemar(a, b)
    assert (out["b10"], out["b01"], out["n"]) == (5, 1, 10)
    assert out["p_value"] == pytest.approx(2 * (1 + 6) / 2**6)  # 2 P(X <= 1), X ~ Bin(6, 1/2)
    assert out["difference"] == pytest.approx(0.4)
    assert mcnemar([1, 0], [1, 0])["p_value"] == 1.0  # no discordant pair
    assert mcnemar([1, 0, 1], [0, 1, 1])["p_value"] == 1.0  # b10 = b01


@pytest.mark.parametrize("b10,b01", [(0, 7), (3, 12), (20, 20), (40, 25), (1, 0), (150, 110)])
def test_mcnemar_matches_scipy(b10, b01):
    scipy_stats = pytest.importorskip("scipy.stats")
    a = [True] * b10 + [False] * b01 + [True] * 5
    b = [False] * b10 + [True] * b01 + [True] * 5
    out = mcnemar(a, b)
    expected = scipy_stats.binomtest(b10, b10 + b01, 0.5).pvalue
    assert out["p_value"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_bad_input():
    with pytest.raises(ParameterError):
        mcnemar([True], [True, False])
    with pytest.raises(ParameterError):
        mcnemar([], [])


def test_paired_bootstrap_detects_shift_and_noise():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 300)
    better = np.clip(base + 0.05 + rng.normal(0, 0.02, 300), 0, 1)
    out = paired_bootstrap(better, base, n_boot=2000)
    assert out["difference"] == pytest.approx(float((better - base).mean()))
    assert out["ci_low"] < out["difference"] < out["ci_high"] and out["ci_low"] > 0
    assert out["p_value"] == pytest.approx(1 / 2001)
    noise = np.clip(base + rng.normal(0, 0.05, 300), 0, 1)
    same = paired_bootstrap(noise, base, n_boot=2000)
    assert same["ci_low"] < 0 < same["ci_high"] or same["p_value"] > 0.05
    # Deterministic for a seed; the CI is the standard error's +-1.96 to first order.
    assert paired_bootstrap(noise, base, n_boot=2000) == same
    d = noise - base
    se = d.std(ddof=0) / math.sqrt(d.size)
    assert (same["ci_high"] - same["ci_low"]) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_bootstrap_hand_case():
    out = paired_bootstrap([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], n_boot=50)
    assert out["difference"] == 1.0 and out["ci_low"] == out["ci_high"] == 1.0
    assert out["p_value"] == pytest.approx(1 / 51)
    zero = paired_bootstrap([0.5, 0.2], [0.5, 0.2], n_boot=50)
    assert zero["difference"] == 0.0 and zero["p_value"] == 1.0


def _rows(correct, mc2, ids=None):
    ids = ids or [f"q{i}" for i in range(len(correct))]
    return [
        {"id": i, "chosen": 0, "correct": bool(c), "mc2": m, "mc2_top1": bool(c)}
        for i, c, m in zip(ids, correct, mc2, strict=True)
    ]


def test_compare_joins_by_id_and_reads_jsonl(tmp_path):
    a = _rows([1, 1, 1, 0], [0.9, 0.8, 0.7, 0.1])
    b = list(reversed(_rows([0, 1, 1, 0], [0.4, 0.8, 0.7, 0.1])))  # other order: joined by id
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in b) + "\n")
    mc1 = compare(a, path, "mc1")
    assert (mc1["test"], mc1["b10"], mc1["b01"], mc1["p_value"]) == ("mcnemar", 1, 0, 1.0)
    assert mc1["verdict"] == "within noise" and not mc1["significant"]
    mc2 = compare(a, b, "mc2", n_boot=500)
    assert mc2["test"] == "paired_bootstrap" and mc2["difference"] == pytest.approx(0.5 / 4)


def test_compare_verdicts_and_errors():
    n = 60
    a = _rows([1] * n, [0.9] * n)
    b = _rows([0] * n, [0.2] * n)
    assert compare(a, b, "mc1")["verdict"] == "a better"
    assert compare(b, a, "mc2", n_boot=200)["verdict"] == "b better"
    with pytest.raises(DataError, match="different questions"):
        compare(a, b[:-1], "mc1")
    with pytest.raises(DataError, match="twice"):
        compare(a + a[:1], b, "mc1")
    with pytest.raises(DataError, match="'mc2'"):
        compare([{"id": "q0", "correct": True}], [{"id": "q0", "correct": False}], "mc2")
    plain_a = [{"id": r["id"], "correct": r["correct"]} for r in a]  # BBQ-style rows: no "acc" key
    plain_b = [{"id": r["id"], "correct": r["correct"]} for r in b]
    assert compare(plain_a, plain_b, "acc")["b10"] == n
    assert compare(a, b, "mc2_top1")["b10"] == n
    with pytest.raises(ParameterError, match="TruthfulQA"):
        compare(a, b, "acc")
    with pytest.raises(ParameterError, match="unknown metric"):
        compare(a, b, "bleu")


def test_compare_methods_table():
    rows = {
        "base": _rows([0, 1, 0, 1], [0.3] * 4),
        "hpr": _rows([1, 1, 1, 1], [0.6] * 4),
        "iti": _rows([0, 1, 1, 1], [0.4] * 4),
    }
    df = compare_methods(rows, "mc1")
    assert list(zip(df["a"], df["b"], strict=True)) == [("hpr", "base"), ("hpr", "iti"), ("iti", "base")]
    assert set(df["verdict"]) <= {"within noise", "a better", "b better"}


def test_seed_spread_mean_and_sd() -> None:
    from hpr.evaluation.stats import seed_spread

    def row(method: str, seed: int, mc1: float, tag: str = "") -> dict:
        return {
            "model": "m",
            "method": method,
            "seed": seed,
            "tag": tag,
            "metrics": {"mc1": {"value": mc1, "stderr": 0.0}, "mc2": {"value": 0.5, "stderr": 0.0}},
        }

    df = seed_spread(
        [
            row("hpr", 0, 0.40),
            row("hpr", 1, 0.50),
            row("hpr", 2, 0.45),
            row("base", 0, 0.2),
            row("hpr", 3, 0.99, tag="k1"),
        ]
    )
    hpr = df[df.method == "hpr"].iloc[0]
    assert hpr["seeds"] == 3 and hpr["mc1 mean"] == 45.0 and hpr["mc1 sd"] == 5.0
    assert hpr["mc1 per seed"] == "40.0, 50.0, 45.0"
    base = df[df.method == "base"].iloc[0]
    assert base["seeds"] == 1 and base["mc1 sd"] != base["mc1 sd"]  # NaN for one seed
