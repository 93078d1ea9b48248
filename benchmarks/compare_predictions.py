"""Compare two predictions files (``*.jsonl`` from ``hpr eval`` or a book run) question by question.

For checking that a code change (a new kernel, another engine) leaves results alone: how many
questions exist in both files, on how many the chosen answer is the same, and the largest
differences in MC2 and in per-choice log-likelihood. Prints JSON; exit 1 if a question is missing
from one of the files.

    python benchmarks/compare_predictions.py A.jsonl B.jsonl
    python benchmarks/compare_predictions.py --runs runs/book OTHER/runs/book

``--runs`` pairs every predictions file of two output folders by its place in them (a results
folder ``<name>/predictions.jsonl`` and the older ``<name>.jsonl`` count as the same), compares each
pair, and prints one line per pair and a summary; exit 1 if a file or question is missing on one side.
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


def predictions_files(root: Path) -> dict[str, Path]:
    """Predictions files under ``root`` by their key: the path of ``x.jsonl`` or ``x/predictions.jsonl``
    relative to ``root``, without the suffix (``<model>/<dataset>/seed0/results/<eval>/<name>``)."""
    out = {}
    for p in sorted(root.rglob("*.jsonl")):
        rel = p.relative_to(root)
        key = rel.parent if p.name == "predictions.jsonl" else rel.with_suffix("")
        out[key.as_posix()] = p
    return out


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """Every predictions file of two output folders, paired by key, compared."""
    fa, fb = predictions_files(a), predictions_files(b)
    pairs = {k: compare(read(fa[k]), read(fb[k])) for k in sorted(set(fa) & set(fb))}
    return {
        "pairs": pairs,
        "only_in_a": sorted(set(fa) - set(fb)),
        "only_in_b": sorted(set(fb) - set(fa)),
        "all_same_choice": all(v["same_choice"] == v["questions"] for v in pairs.values()),
        "max_mc2_diff": max((v.get("max_mc2_diff", 0.0) for v in pairs.values()), default=0.0),
        "max_loglik_diff": max((v.get("max_loglik_diff", 0.0) for v in pairs.values()), default=0.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--runs", action="store_true", help="a and b are output folders (e.g. runs/book)")
    args = ap.parse_args()
    if args.runs:
        for p in (args.a, args.b):
            if not p.is_dir():
                sys.exit(f"{p} is not a folder; --runs compares two output folders such as runs/book")
        res = compare_runs(args.a, args.b)
        for key, v in res["pairs"].items():
            print(
                f"{key}: {v['same_choice']}/{v['questions']} same choice, max MC2 diff "
                f"{v.get('max_mc2_diff', 0.0):.3g}, max log-likelihood diff {v.get('max_loglik_diff', 0.0):.3g}"
            )
        summary = {k: v for k, v in res.items() if k != "pairs"}
        summary["files"] = len(res["pairs"])
        print(json.dumps(summary, indent=2))
        sys.exit(
            1
            if res["only_in_a"]
            or res["only_in_b"]
            or any(v["only_in_a"] or v["only_in_b"] for v in res["pairs"].values())
            else 0
        )
    for p in (args.a, args.b):
        if not p.is_file():
            sys.exit(f"{p} does not exist; pass two predictions .jsonl files")
    out = compare(read(args.a), read(args.b))
    print(json.dumps(out, indent=2))
    sys.exit(1 if out["only_in_a"] or out["only_in_b"] else 0)


if __name__ == "__main__":
    main()
