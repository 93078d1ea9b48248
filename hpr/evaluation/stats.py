"""Paired statistics: every method is scored on the same questions, so compare them question by question.

MC1 (and accuracy) are 0/1 per question: McNemar's exact test on the discordant questions. MC2 is
a score in [0, 1] per question: a paired bootstrap of the mean difference. Differences are
always ``a - b``; a p-value at or above ``alpha`` (0.05) means the difference is within noise,
and ``compare`` says so in ``verdict``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpr.errors import DataError, ParameterError

#: Metrics ``compare`` understands: the prediction-row key each reads and its test. ``acc`` is the
#: accuracy of BBQ/SEQ/ToxiGen rows (``correct``); TruthfulQA rows have ``mc1``, ``mc2``, ``mc2_top1``.
METRICS: dict[str, tuple[str, str]] = {
    "mc1": ("correct", "mcnemar"),
    "acc": ("correct", "mcnemar"),
    "correct": ("correct", "mcnemar"),
    "mc2_top1": ("mc2_top1", "mcnemar"),
    "mc2": ("mc2", "paired_bootstrap"),
}


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips: ``min(1, 2 P(X <= min(k, n-k)))``."""
    if n == 0:
        return 1.0
    m = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(m + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of two methods' 0/1 outcomes on the same questions.

    ``b10``: questions ``a`` gets right and ``b`` wrong; ``b01``: the reverse. The p-value is the
    exact two-sided binomial test of ``b10`` out of ``b10 + b01`` at 1/2 (1.0 with no discordant
    question). Returns ``n``, ``mean_a``, ``mean_b``, ``difference`` (``mean_a - mean_b``),
    ``b01``, ``b10`` and ``p_value``.
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ParameterError(f"mcnemar needs two equal-length 1-d sequences, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ParameterError("mcnemar needs at least one question")
    b10 = int((a & ~b).sum())
    b01 = int((~a & b).sum())
    return {
        "n": int(a.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "difference": float(a.mean() - b.mean()),
        "b01": b01,
        "b10": b10,
        "p_value": _binom_two_sided(b10, b10 + b01),
    }


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10000, seed: int = 0, chunk: int = 1000
) -> dict[str, Any]:
    """Paired bootstrap of the mean difference ``mean(a - b)`` over the same questions.

    Questions are resampled with replacement ``n_boot`` times (numpy ``default_rng(seed)``).
    ``ci_low``/``ci_high``: the 2.5 and 97.5 percentiles of the resampled means; ``p_value``:
    two-sided, from the resampled means shifted to the null (mean 0):
    ``(1 + #{|m* - m| >= |m|}) / (n_boot + 1)``.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ParameterError(f"paired_bootstrap needs two equal-length 1-d sequences, got {x.shape} and {y.shape}")
    if x.size == 0 or n_boot < 1:
        raise ParameterError(f"paired_bootstrap needs at least one question and n_boot >= 1 (n_boot={n_boot})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("paired_bootstrap got a NaN or infinite score; check the prediction rows")
    d = x - y
    mean = float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for s in range(0, n_boot, chunk):
        m = min(chunk, n_boot - s)
        means[s : s + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(1)
    extreme = int((np.abs(means - mean) >= abs(mean) - 1e-15).sum())
    return {
        "n": int(d.size),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "difference": mean,
        "ci_low": float(np.percentile(means, 2.5)),
        "ci_high": float(np.percentile(means, 97.5)),
        "p_value": (1 + extreme) / (n_boot + 1),
        "n_boot": n_boot,
        "seed": seed,
    }


def read_rows(rows: str | Path | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Prediction rows from a JSONL file (``hpr.evaluation.metrics.predict`` rows) or a sequence of dicts."""
    if isinstance(rows, (str, Path)):
        path = Path(rows)
        if not path.is_file():
            raise DataError(f"predictions file {path} does not exist; run the evaluation first")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(rows)


def _by_id(rows: Sequence[Mapping[str, Any]], key: str, side: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        if "id" not in r or key not in r:
            raise DataError(
                f"a prediction row of {side} lacks 'id' or {key!r} (keys: {sorted(r)}); "
                f"metric {key!r} needs rows of hpr.evaluation.metrics.predict for that dataset"
            )
        if r["id"] in out:
            raise DataError(f"question id {r['id']!r} appears twice in {side}'s predictions")
        out[str(r["id"])] = r[key]
    return out


def compare(
    pred_a_rows: str | Path | Sequence[Mapping[str, Any]],
    pred_b_rows: str | Path | Sequence[Mapping[str, Any]],
    metric: str,
    *,
    alpha: float = 0.05,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired comparison of two methods' predictions (rows or JSONL paths), joined by question id.

    ``metric``: ``mc1`` / ``mc2_top1`` / ``acc`` / ``correct`` (McNemar) or ``mc2`` (paired bootstrap). Both sides
    must hold the same question ids. Adds ``metric``, ``test``, ``significant`` (p < ``alpha``) and
    ``verdict`` (``"a better"``, ``"b better"`` or ``"within noise"``) to the test's result.
    """
    if metric not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    key, test = METRICS[metric]
    rows_a, rows_b = read_rows(pred_a_rows), read_rows(pred_b_rows)
    if metric == "acc" and any("mc2" in r for r in [*rows_a, *rows_b]):
        raise ParameterError("these are TruthfulQA rows, whose 'correct' is MC1; compare them on mc1, mc2 or mc2_top1")
    a = _by_id(rows_a, key, "a")
    b = _by_id(rows_b, key, "b")
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise DataError(
            f"the two prediction sets cover different questions ({len(only_a)} only in a, e.g. "
            f"{only_a[:3]}; {len(only_b)} only in b, e.g. {only_b[:3]}); score both on the same split"
        )
    ids = sorted(a)
    if test == "mcnemar":
        out = mcnemar([bool(a[i]) for i in ids], [bool(b[i]) for i in ids])
    else:
        out = paired_bootstrap([float(a[i]) for i in ids], [float(b[i]) for i in ids], n_boot, seed)
    significant = out["p_value"] < alpha
    verdict = "within noise" if not significant else ("a better" if out["difference"] > 0 else "b better")
    return {"metric": metric, "test": test, **out, "significant": bool(significant), "verdict": verdict}


def compare_methods(
    rows: Mapping[str, str | Path | Sequence[Mapping[str, Any]]],
    metric: str,
    hpr: str = "hpr",
    base: str = "base",
    **kw: Any,
) -> Any:
    """HPR against every other method and every method against base: a pandas DataFrame, one row
    per comparison (``a``, ``b`` and ``compare``'s fields; differences are ``a - b``)."""
    import pandas as pd

    if hpr not in rows and base not in rows:
        raise ParameterError(f"compare_methods needs {hpr!r} or {base!r} among the methods, got {sorted(rows)}")
    pairs = [(hpr, m) for m in rows if m != hpr] if hpr in rows else []
    if base in rows:
        pairs += [(m, base) for m in rows if m != base and (m, base) not in pairs]
    return pd.DataFrame([{"a": a, "b": b, **compare(rows[a], rows[b], metric, **kw)} for a, b in pairs])


def seed_spread(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("mc1", "mc2")) -> Any:
    """Mean and spread over split seeds of results rows (``hpr.study.results.get_results`` dicts): a pandas
    DataFrame, one row per (model, method) with ``seeds`` (how many), and per metric the mean and
    sample standard deviation (ddof=1; NaN for one seed) in percent and the per-seed values."""
    import pandas as pd

    groups: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("tag"):
            continue
        groups.setdefault((str(r["model"]), str(r["method"])), {})[int(r["seed"])] = r
    out = []
    for (model, method), by_seed in groups.items():
        row: dict[str, Any] = {"model": model, "method": method, "seeds": len(by_seed)}
        for metric in metrics:
            vals = [
                100 * float(by_seed[s]["metrics"][metric]["value"])
                for s in sorted(by_seed)
                if metric in by_seed[s].get("metrics", {})
            ]
            if not vals:
                continue
            arr = np.asarray(vals)
            row[f"{metric} mean"] = round(float(arr.mean()), 1)
            row[f"{metric} sd"] = round(float(arr.std(ddof=1)), 1) if arr.size > 1 else float("nan")
            row[f"{metric} per seed"] = ", ".join(f"{v:.1f}" for v in vals)
        out.append(row)
    return pd.DataFrame(out)


__all__ = ["METRICS", "compare", "compare_methods", "mcnemar", "paired_bootstrap", "read_rows", "seed_spread"]
