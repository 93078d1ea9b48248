"""Metrics, prediction rows and flip rates on constructed predictions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpr.data.records import Record
from hpr.errors import DataError
from hpr.evaluation.metrics import argmax, flip_rates, loglik_shift, mc2_score, mean_stderr, predict, summarize


def test_mc2_score_known_values() -> None:
    ll = [math.log(0.2), math.log(0.3), math.log(0.5)]
    assert mc2_score(ll, [0, 1]) == pytest.approx(0.5)
    assert mc2_score([0.0, 0.0], [1]) == pytest.approx(0.5)
    # only relative probabilities matter
    assert mc2_score([x - 7 for x in ll], [2]) == pytest.approx(0.5)


def _lmeval_mc2(ll: list[float], n_true: int) -> float:
    """lm-eval 0.4's ``process_results_mc2`` formula (true answers first), written out."""
    p_true, p_false = np.exp(np.array(ll[:n_true])), np.exp(np.array(ll[n_true:]))
    p_true = p_true / (sum(p_true) + sum(p_false))
    return float(sum(p_true))


def test_mc2_score_survives_underflow() -> None:
    # every choice below exp's range (about -745 nats): exp gives 0 and lm-eval's formula 0/0
    ll = [-900.0 + math.log(0.2), -900.0 + math.log(0.3), -900.0 + math.log(0.5)]
    with np.errstate(invalid="ignore"):
        assert math.isnan(_lmeval_mc2(ll, 2))
    assert mc2_score(ll, [0, 1]) == pytest.approx(0.5)
    # subnormal range (-745..-708): digits are lost without the shift
    assert mc2_score([-730.0, -730.0 + math.log(3.0)], [1]) == pytest.approx(0.75, rel=1e-12)
    # one choice far below the others contributes nothing, as in exact arithmetic
    assert mc2_score([-2000.0, -10.0], [1]) == 1.0
    assert mc2_score([-math.inf, -1000.0], [1]) == 1.0
    assert math.isnan(mc2_score([-math.inf, -math.inf], [1]))


def test_mc2_score_is_lmeval_formula_in_range() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 9))
        n_true = int(rng.integers(1, n))
        ll = list(rng.uniform(-700.0, 0.0, size=n) if rng.random() < 0.5 else rng.normal(-30.0, 20.0, size=n))
        if np.exp(np.array(ll)).sum() < np.finfo(np.float64).tiny:
            continue
        assert mc2_score(ll, list(range(n_true))) == pytest.approx(_lmeval_mc2(ll, n_true), rel=1e-15, abs=0)


def test_mean_stderr_is_sample_std_over_sqrt_n() -> None:
    vals = [1.0, 0.0, 1.0, 1.0]
    m, se = mean_stderr(vals)
    assert m == 0.75
    assert se == pytest.approx(np.std(vals, ddof=1) / 2)
    assert math.isnan(mean_stderr([1.0])[1])


def test_argmax_first_on_ties() -> None:
    assert argmax([1.0, 3.0, 3.0]) == 1


def _tqa() -> Record:
    # choices: true answers 0, 1; false answers 2, 3; best = 1; MC1 = best then the false ones
    return Record("t", "Q?", ("a", "b", "c", "d"), (0, 1), best=1, mc1=(1, 2, 3))


def test_predict_truthfulqa() -> None:
    row = predict("truthfulqa", _tqa(), [-1.0, -2.0, -3.0, -2.5])
    # MC1 compares only b, c, d: b wins; the overall argmax (a) is a true answer too
    assert row["chosen"] == 1 and row["correct"] is True and row["mc2_top1"] is True and "acc" not in row
    p = np.exp([-1.0, -2.0, -3.0, -2.5])
    assert row["mc2"] == pytest.approx(p[:2].sum() / p.sum())
    row = predict("truthfulqa", _tqa(), [-1.0, -2.0, -2.0, -2.5])  # tie: first (the best) wins
    assert row["chosen"] == 1 and row["correct"] is True
    row = predict("truthfulqa", _tqa(), [-9.0, -2.0, -1.0, -2.5])
    assert row["chosen"] == 2 and row["correct"] is False and row["mc2_top1"] is False


def test_predict_truthfulqa_mc2_over_exactly_mc2() -> None:
    # MC2 = a (true), b (true), c (false); d is an MC1-only wrong answer outside MC2
    rec = Record("t", "Q?", ("a", "b", "c", "d"), (0, 1), best=0, mc1=(0, 3), mc2=(0, 1, 2))
    ll = [-2.0, -3.0, -2.5, -0.5]
    row = predict("truthfulqa", rec, ll)
    p = np.exp(ll[:3])
    assert row["mc2"] == pytest.approx(p[:2].sum() / p.sum())  # d not in the denominator
    assert row["chosen"] == 3 and row["correct"] is False  # MC1 over a, d only: d wins
    assert row["mc2_top1"] is True  # argmax over a, b, c is a (true), though d is the overall argmax


def test_predict_accuracy_and_summary() -> None:
    rec = Record("b", "ctx", ("x", "y", "z"), (2,))
    rows = [predict("bbq", rec, ll) for ll in ([0.0, -1.0, -2.0], [-3.0, -2.0, -1.0], [-3.0, -2.0, -1.0])]
    assert [r["chosen"] for r in rows] == [0, 2, 2]
    s = summarize("bbq", rows)
    assert s["acc"]["value"] == pytest.approx(2 / 3)
    assert s["acc"]["stderr"] == pytest.approx(np.std([0, 1, 1], ddof=1) / math.sqrt(3))
    with pytest.raises(DataError):
        predict("bbq", rec, [0.0])


def test_summary_truthfulqa() -> None:
    rows = [{"correct": True, "mc2": 0.8, "mc2_top1": True}, {"correct": False, "mc2": 0.4, "mc2_top1": True}]
    s = summarize("truthfulqa", rows)
    assert set(s) == {"mc1", "mc2", "mc2_top1"}
    assert s["mc1"]["value"] == 0.5 and s["mc2"]["value"] == pytest.approx(0.6) and s["mc2_top1"]["value"] == 1.0
    assert s["mc2"]["stderr"] == pytest.approx(np.std([0.8, 0.4], ddof=1) / math.sqrt(2))


def test_flip_rates_known_answers() -> None:
    before = [{"id": str(i), "correct": c} for i, c in enumerate([True, True, False, False, False, True, False, False])]
    after_ = [True, False, True, False, True, True, False, False]
    # i: 0 T->T, 1 T->F, 2 F->T, 3 F->F, 4 F->T, 5 T->T, 6 F->F, 7 F->F ; shuffled order
    after = [{"id": str(i), "correct": c} for i, c in reversed(list(enumerate(after_)))]
    f = flip_rates(before, after)
    assert f["n"] == 8
    assert f["remains_true"] == 25.0
    assert f["true_to_false"] == 12.5
    assert f["false_to_true"] == 25.0
    assert f["remains_false"] == 37.5
    assert f["accuracy_before"] == 37.5 and f["accuracy_after"] == 50.0
    assert sum(f[k] for k in ("remains_true", "true_to_false", "false_to_true", "remains_false")) == 100.0


def test_flip_rates_bad_input() -> None:
    a = [{"id": "1", "correct": True}]
    with pytest.raises(DataError):
        flip_rates(a, [{"id": "2", "correct": True}])
    with pytest.raises(DataError):
        flip_rates(a + a, a + a)
    with pytest.raises(DataError):
        flip_rates([], [])


def test_loglik_shift_pairs_choices_by_id() -> None:
    before = [{"id": "a", "logliks": [-1.0, -2.0]}, {"id": "b", "logliks": [-3.0, -4.0, -5.0]}]
    after = [{"id": "b", "logliks": [-13.0, -4.0, -5.0]}, {"id": "a", "logliks": [-2.0, -2.0]}]
    s = loglik_shift(before, after)
    # per-choice changes: a: -1, 0; b: -10, 0, 0
    assert s["median_shift"] == 0.0 and s["p10_shift"] == pytest.approx(np.percentile([-1, 0, -10, 0, 0], 10))
    assert s["median_before"] == -3.0 and s["median_after"] == -4.0
    assert s["choices"] == 5 and s["n"] == 2
    with pytest.raises(DataError, match="different number of choices"):
        loglik_shift(before, [{"id": "a", "logliks": [-1.0]}, after[0]])
    with pytest.raises(DataError, match="different examples"):
        loglik_shift(before, after[:1])
    with pytest.raises(DataError, match="has no 'logliks'"):
        loglik_shift(before, [{"id": "a"}, after[0]])
