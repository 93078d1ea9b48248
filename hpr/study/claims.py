"""Verdicts on the paper's claims from our numbers: "a > b" holds, is within noise, or does not
hold, judged against the combined standard error of the two cells (percent, ``(value, stderr)``).
The results tables (``hpr.study.tables``) write these sentences; no number in them is typed by hand."""

from __future__ import annotations

from collections.abc import Sequence

from hpr.study import paper

Cell = tuple[float, float | None]


def _diff(a: Cell, b: Cell) -> tuple[float, float | None]:
    return a[0] - b[0], paper.combined_stderr(a[1], b[1])


def _se_text(se: float | None) -> str:
    return "no standard error" if se is None else f"combined standard error {se:.1f}"


def _gap(a_name: str, b_name: str, d: float) -> str:
    return f"{a_name} − {b_name} = {d:+.1f} points"


def claim_greater(a: Cell | None, b: Cell | None, a_name: str, b_name: str) -> str:
    """Verdict on "a > b": holds (beyond the combined standard error), within noise, or does not hold."""
    if a is None or b is None:
        return f"cannot be checked (no {a_name if a is None else b_name} result)"
    d, se = _diff(a, b)
    if d <= 0:
        return f"does not hold ({_gap(a_name, b_name, d)}, {_se_text(se)})"
    if se is None:
        return f"holds in direction only ({_gap(a_name, b_name, d)}, no standard error)"
    verdict, where = ("holds", "beyond") if d > se else ("within noise", "not beyond")
    return f"{verdict} ({_gap(a_name, b_name, d)}, {where} the {_se_text(se)})"


def claim_similar(a: Cell | None, b: Cell | None, a_name: str, b_name: str) -> str:
    """Verdict on "a ~ b": holds when the difference is within the combined standard error."""
    if a is None or b is None:
        return f"cannot be checked (no {a_name if a is None else b_name} result)"
    d, se = _diff(a, b)
    if se is None:
        return f"cannot be judged ({_gap(a_name, b_name, d)}, no standard error)"
    verdict, where = ("holds", "within") if abs(d) <= se else ("does not hold", "beyond")
    return f"{verdict} ({_gap(a_name, b_name, d)}, {where} the {_se_text(se)})"


def claim_beats_all(hpr: Cell | None, others: Sequence[tuple[str, Cell | None]]) -> str:
    """Verdict on "HPR > every one of ``others``" (label, cell): names the weakest margin and any
    baseline without a result."""
    present = [(name, c) for name, c in others if c is not None]
    if hpr is None or not present:
        return f"cannot be checked (no {'HPR' if hpr is None else 'baseline'} result)"
    absent = [name for name, c in others if c is None]
    note = f"; no result for {', '.join(absent)}" if absent else ""
    diffs = [(name, *_diff(hpr, c)) for name, c in present]
    lost = [t for t in diffs if t[1] <= 0]
    close = [t for t in diffs if t[1] > 0 and (t[2] is None or t[1] <= t[2])]
    if lost:
        n, d, se = min(lost, key=lambda t: t[1])
        return f"does not hold ({_gap('HPR', n, d)}, {_se_text(se)}{note})"
    if close:
        n, d, se = min(close, key=lambda t: t[1])
        return f"within noise ({_gap('HPR', n, d)}, not beyond the {_se_text(se)}{note})"
    n, d, se = min(diffs, key=lambda t: t[1])
    return f"holds (smallest margin {_gap('HPR', n, d)}, beyond the {_se_text(se)}{note})"


__all__ = ["Cell", "claim_beats_all", "claim_greater", "claim_similar"]
