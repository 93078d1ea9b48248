"""Multiple-choice metrics (MC1, MC2, accuracy) with standard errors, predictions, flip rates.

Conventions follow lm-evaluation-harness: a prediction is the argmax of the per-choice
log-likelihoods (first index on ties); MC2 is the normalized probability mass on the true
answers (``exp`` of the summed log-likelihoods); a metric's standard error is the sample
standard deviation (ddof=1) over examples divided by ``sqrt(n)``.

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

    Computed as lm-eval's ``process_results_mc2`` (``exp`` of the raw log-likelihoods).
    """
    ll = np.asarray(logliks, dtype=np.float64)
    probs = np.exp(ll)
    norm = probs / probs.sum()
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


def flip_rates(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], key: str = "correct"
) -> dict[str, float]:
    """How predictions change between two runs on the same examples, in percent of examples.

    Rows are matched by ``id``; both runs must cover the same ids. Returns ``false_to_true``,
    ``true_to_false``, ``remains_true``, ``remains_false`` (these four sum to 100),
    ``accuracy_before``, ``accuracy_after`` (percent) and ``n``.
    """
    a = {r["id"]: bool(r[key]) for r in before}
    b = {r["id"]: bool(r[key]) for r in after}
    if len(a) != len(before) or len(b) != len(after):
        raise DataError("prediction rows have duplicate ids; each example must appear once per run")
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[:5]
        raise DataError(f"the two runs cover different examples (e.g. {missing}); evaluate the same split")
    n = len(a)
    if n == 0:
        raise DataError("no examples to compare")
    counts = {"false_to_true": 0, "true_to_false": 0, "remains_true": 0, "remains_false": 0}
    for i, x in a.items():
        y = b[i]
        name = ("remains_true" if y else "true_to_false") if x else ("false_to_true" if y else "remains_false")
        counts[name] += 1
    out: dict[str, float] = {k: 100.0 * v / n for k, v in counts.items()}
    out["accuracy_before"] = 100.0 * sum(a.values()) / n
    out["accuracy_after"] = 100.0 * sum(b.values()) / n
    out["n"] = n
    return out


__all__ = ["argmax", "flip_rates", "mc2_score", "mean_stderr", "predict", "summarize"]
