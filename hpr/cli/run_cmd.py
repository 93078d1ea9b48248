"""``hpr run`` (execute the study's notebooks) and ``hpr book`` (build the Jupyter Book)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="execute the book's notebooks with papermill")
    run.add_argument("--profile", default="cpu", help="parameter profile: cpu (default: the main study, what make book runs), cpu-extended (the extended notebook, hours) or gpu (every notebook)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a notebook parameter (JSON value), e.g. -p model=org/name -p k=3")
    run.add_argument("--only", action="append", default=None, metavar="NOTEBOOK",
                     help="run only this notebook (repeatable), e.g. --only 04_benchmarks")
    run.add_argument("--force", action="store_true", help="re-execute notebooks that are up to date")
    run.add_argument("--root", default=".", help="repository root (default: .)")
    run.set_defaults(func=_run)

    book = sub.add_parser("book", help="build the Jupyter Book (warnings are errors, renders offline)")
    book.add_argument("--root", default=".", help="repository root (default: .)")
    book.add_argument("--runs", default="runs/book", help="results folder for the summary table")
    book.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    book.set_defaults(func=_book)


def _run(args: argparse.Namespace) -> int:
    from ..runner import parse_overrides, run_study

    results = run_study(args.profile, parse_overrides(args.param), args.only, args.force, args.root)
    total = sum(r.seconds for r in results if r.status == "ran")
    print(f"{'notebook':<24} {'status':<8} {'seconds':>8}")
    for r in results:
        print(f"{r.name:<24} {r.status:<8} {r.seconds:>8.1f}" + (f"  cell {r.cell}: {r.error}" if r.error else ""))
    print(f"executed in {total:.1f} s")
    return 1 if any(r.status in {"failed", "blocked"} for r in results) else 0


def _book(args: argparse.Namespace) -> int:
    from ..book import build_book

    result = build_book(args.root, strict=not args.no_strict, runs_dir=args.runs)
    print(f"built {result.pages} pages in {result.seconds:.1f} s: {result.html / 'index.html'}")
    return 0
