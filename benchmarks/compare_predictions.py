"""Compare two predictions files (``*.jsonl`` from ``hpr eval`` or a book run) question by question.

For checking that a code change (a new kernel, another engine) leaves results alone: how many
questions exist in both files, on how many the chosen answer is the same, and the largest
differences in MC2 and in per-choice log-likelihood. Prints JSON; exit 1 if a question is missing
from one of the files.

    python benchmarks/compare_predictions.py A.jsonl B.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def read(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a predictions file by question id."""
    rows = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    rows[str(row["id"])] = row
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    sys.exit(f"{path}:{n} is not a predictions row with an 'id' ({exc})")
    return rows


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    both = sorted(set(a) & set(b))
    out: dict[str, Any] = {
        "questions": len(both),
        "only_in_a": len(set(a) - set(b)),
        "only_in_b": len(set(b) - set(a)),
        "same_choice": sum(a[q]["chosen"] == b[q]["chosen"] for q in both),
    }
    if all("mc2" in a[q] and "mc2" in b[q] for q in both):
        out["max_mc2_diff"] = max((abs(a[q]["mc2"] - b[q]["mc2"]) for q in both), default=0.0)
    if all("logliks" in a[q] and "logliks" in b[q] for q in both):
        out["max_loglik_diff"] = max(
            (abs(x - y) for q in both for x, y in zip(a[q]["logliks"], b[q]["logliks"], strict=True)),
            default=0.0,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    for p in (args.a, args.b):
        if not p.is_file():
            sys.exit(f"{p} does not exist; pass two predictions .jsonl files")
    out = compare(read(args.a), read(args.b))
    print(json.dumps(out, indent=2))
    sys.exit(1 if out["only_in_a"] or out["only_in_b"] else 0)


if __name__ == "__main__":
    main()
