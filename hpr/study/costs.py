"""Table 1's companion: what each edit costs in likelihood (not a table of the paper).

MC1 and MC2 compare a question's choices with one another, so an edit that makes every answer far
less likely (a less fluent model) can still raise them. Inputs are *shifts*: our model -> method ->
``hpr.evaluation.metrics.loglik_shift`` dict (nats per choice, the log-likelihood summed over the
choice's tokens, edited minus base on the same TruthfulQA test questions). Numbers are printed
with one decimal; every sentence is written from them.
"""

from __future__ import annotations

from collections.abc import Mapping

from hpr.study import paper
from hpr.study.labels import EXTRA_ORDER, MISSING, Flips, markdown_table, method_label, model_label

#: Column label -> key of the ``loglik_shift`` dict.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("median log-lik", "median_after"),
    ("median change", "median_shift"),
    ("10th pct change", "p10_shift"),
)


def _order(shifts: Flips) -> list[str]:
    found = list(dict.fromkeys(m for per in shifts.values() for m in per))
    known = [*paper.TABLE1_METHODS, *EXTRA_ORDER]
    return sorted(found, key=lambda m: (known.index(m) if m in known else len(known), found.index(m)))


def _base_median(per: Mapping[str, Mapping[str, float]]) -> float | None:
    return next((float(s["median_before"]) for s in per.values()), None)


def loglik_table(shifts: Flips) -> str:
    """Per model: the median per-choice log-likelihood (nats) under each method, and the median and
    10th percentile of its change against base (negative = the edit makes choices less likely)."""
    models = list(shifts)
    header = ["Method"] + [f"{model_label(m)} {label}" for m in models for label, _ in COLUMNS]
    base = ["Base"]
    for m in models:
        b = _base_median(shifts[m])
        base += [MISSING if b is None else f"{b:.1f}", "0.0", "0.0"]
    body = [base]
    for method in _order(shifts):
        row = [method_label(method)]
        for m in models:
            s = shifts[m].get(method)
            row += [MISSING] * len(COLUMNS) if s is None else [f"{float(s[key]):.1f}" for _, key in COLUMNS]
        body.append(row)
    return markdown_table(header, body)


def loglik_claims(shifts: Flips) -> str:
    """One sentence per model: the base median, then each edit's median change, smallest cost first."""
    out = []
    for model, per in shifts.items():
        b = _base_median(per)
        if b is None:
            continue
        ranked = sorted(per.items(), key=lambda kv: -float(kv[1]["median_shift"]))
        changes = ", ".join(f"{method_label(m)} {float(s['median_shift']):+.1f}" for m, s in ranked)
        worst, ws = ranked[-1]
        down = sum(float(s["median_shift"]) < 0 for s in per.values())
        tail = (
            f"; under {method_label(worst)} a tenth of the choices lose more than {-float(ws['p10_shift']):.1f} nats"
            if float(ws["p10_shift"]) < 0
            else ""
        )
        out.append(
            f"**{model_label(model)}.** The base model's median choice log-likelihood is {b:.1f} nats. "
            f"Median change per choice, smallest cost first: {changes}. "
            f"{down} of {len(per)} edits make the median choice less likely{tail}."
        )
    return "\n\n".join(out) + ("\n" if out else "")


__all__ = ["COLUMNS", "loglik_claims", "loglik_table"]
