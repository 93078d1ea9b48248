"""Multiple-choice metrics (MC1, MC2, accuracy) with standard errors, predictions, flip rates.

Conventions follow lm-evaluation-harness: a prediction is the argmax of the per-choice
log-likelihoods (first index on ties); MC2 is the normalized probability mass on the true
answers (``exp`` of the summed log-likelihoods); a metric's standard error is the sample
standard deviation (ddof=1) over examples divided by ``sqrt(n)``. ``loglik_shift`` is not a paper
metric: how much an edit lowers every choice's likelihood (its cost in fluency).

A *prediction row* (one JSONL line) is ``{"id", "chosen", "correct", "logliks"}``: ``chosen``
indexes ``Record.choices``; for TruthfulQA ``chosen``/``correct`` are MC1's (over ``Record.mc1``,
best answer first) and the row adds ``"mc2"`` (over exactly ``Record.mc2``, lm-eval's
``mc2_targets``) and ``"mc2_top1"`` (the argmax over the MC2 choices is a true answer; not a
paper metric). Other datasets: ``correct`` is accuracy (``acc``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpr.data.records import Record
from hpr.errors import DataError


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value, the first one on ties (as ``numpy.argmax``)."""
    if not len(values):
        raise DataError("cannot pick a choice among zero log-likelihoods")
    return int(np.argmax(np.asarray(values, dtype=np.float64)))


def mc2_score(logliks: Sequence[float], true_idx: Sequence[int]) -> float:
    """Normalized probability mass on ``true_idx``: ``sum(p[true]) / sum(p)``, ``p = exp(ll)``.

    Computed as lm-eval's ``process_results_mc2`` (``exp`` of the raw log-likelihoods; equal up to
    summation order) whenever ``sum(p)`` is a normal float. When every choice is so unlikely that ``sum(p)``
    underflows (all log-likelihoods below about -708 nats; lm-eval then returns NaN from 0/0 or
    loses digits in subnormals), the same ratio is taken after shifting by the largest
    log-likelihood. NaN only when a log-likelihood is NaN or every one is ``-inf``.
    """
    ll = np.asarray(logliks, dtype=np.float64)
    if not np.isfinite(ll).any():
        return float("nan")
    probs = np.exp(ll)
    total = probs.sum()
    if not total >= np.finfo(np.float64).tiny:
        probs = np.exp(ll - ll[np.isfinite(ll)].max())
        total = probs.sum()
    norm = probs / total
    mask = np.zeros(len(ll), dtype=bool)
    mask[list(true_idx)] = True
    return float(norm[mask].sum())


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, sample std / sqrt(n))``; the error is NaN for fewer than two values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    if arr.size == 1:
        return float(arr[0]), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))


def predict(dataset: str, record: Record, logliks: Sequence[float]) -> dict[str, Any]:
    """The prediction row of ``record`` from its per-choice log-likelihoods (nats)."""
    ll = [float(x) for x in logliks]
    if len(ll) != len(record.choices):
        raise DataError(f"record {record.id!r} has {len(record.choices)} choices but {len(ll)} log-likelihoods")
    good = set(record.correct)
    row: dict[str, Any] = {"id": record.id}
    if dataset == "truthfulqa":
        if record.mc1 is None:
            raise DataError(f"TruthfulQA record {record.id!r} has no mc1 choices")
        mc1 = list(record.mc1)
        mc2 = list(record.mc2) if record.mc2 is not None else list(range(len(ll)))
        chosen = mc1[argmax([ll[i] for i in mc1])]
        ll2 = [ll[i] for i in mc2]
        true2 = [j for j, i in enumerate(mc2) if i in good]
        row.update(
            chosen=chosen, correct=chosen == mc1[0], mc2=mc2_score(ll2, true2), mc2_top1=mc2[argmax(ll2)] in good
        )
    else:
        best_all = argmax(ll)
        row.update(chosen=best_all, correct=best_all in good)
    row["logliks"] = ll
    return row


def summarize(dataset: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Metrics over prediction rows: ``{name: {"value", "stderr", "n"}}``.

    TruthfulQA: ``mc1``, ``mc2`` and ``mc2_top1`` (a true MC2 answer ranked first); else ``acc``.
    """
    names = {"mc1": "correct", "mc2": "mc2", "mc2_top1": "mc2_top1"} if dataset == "truthfulqa" else {"acc": "correct"}
    out = {}
    for name, key in names.items():
        vals = [float(r[key]) for r in rows]
        m, se = mean_stderr(vals)
        out[name] = {"value": m, "stderr": se, "n": len(vals)}
    return out


def _paired(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Rows of two runs on the same examples, matched by ``id`` (in ``before``'s order)."""
    a = {r["id"]: r for r in before}
    b = {r["id"]: r for r in after}
    if len(a) != len(before) or len(b) != len(after):
        raise DataError("prediction rows have duplicate ids; each example must appear once per run")
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[:5]
        raise DataError(f"the two runs cover different examples (e.g. {missing}); evaluate the same split")
    if not a:
        raise DataError("no examples to compare")
    return [(r, b[i]) for i, r in a.items()]


def flip_rates(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], key: str = "correct"
) -> dict[str, float]:
    """How predictions change between two runs on the same examples, in percent of examples.

    Rows are matched by ``id``; both runs must cover the same ids. Returns ``false_to_true``,
    ``true_to_false``, ``remains_true``, ``remains_false`` (these four sum to 100),
    ``accuracy_before``, ``accuracy_after`` (percent) and ``n``.
    """
    pairs = _paired(before, after)
    n = len(pairs)
    counts = {"false_to_true": 0, "true_to_false": 0, "remains_true": 0, "remains_false": 0}
    for ra, rb in pairs:
        x, y = bool(ra[key]), bool(rb[key])
        name = ("remains_true" if y else "true_to_false") if x else ("false_to_true" if y else "remains_false")
        counts[name] += 1
    out: dict[str, float] = {k: 100.0 * v / n for k, v in counts.items()}
    out["accuracy_before"] = 100.0 * sum(bool(ra[key]) for ra, _ in pairs) / n
    out["accuracy_after"] = 100.0 * sum(bool(rb[key]) for _, rb in pairs) / n
    out["n"] = n
    return out


def loglik_shift(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """How an edit moves every choice's log-likelihood (nats, summed over the choice's tokens).

    MC1 and MC2 compare choices with one another, so an edit that makes *every* answer far less
    likely (a less fluent model) can still raise them; this measures that cost. Rows are matched by
    ``id`` and choices by index (``logliks`` of the prediction rows). Returns ``median_before`` and
    ``median_after`` (median per-choice log-likelihood), ``median_shift`` and ``p10_shift`` (median
    and 10th percentile of ``after - before`` per choice: the typical and the worst-hit tenth),
    ``choices`` (number of choices) and ``n`` (examples).
    """
    pairs = _paired(before, after)
    la, lb = [], []
    for ra, rb in pairs:
        if "logliks" not in ra or "logliks" not in rb:
            raise DataError(f"example {ra['id']!r} has no 'logliks' in its prediction rows; evaluate the run again")
        if len(ra["logliks"]) != len(rb["logliks"]):
            raise DataError(f"example {ra['id']!r} has a different number of choices in the two runs")
        la.extend(ra["logliks"])
        lb.extend(rb["logliks"])
    a, b = np.asarray(la, dtype=np.float64), np.asarray(lb, dtype=np.float64)
    d = b - a
    return {
        "median_before": float(np.median(a)),
        "median_after": float(np.median(b)),
        "median_shift": float(np.median(d)),
        "p10_shift": float(np.percentile(d, 10)),
        "choices": int(a.size),
        "n": len(pairs),
    }


__all__ = ["argmax", "flip_rates", "loglik_shift", "mc2_score", "mean_stderr", "predict", "summarize"]
