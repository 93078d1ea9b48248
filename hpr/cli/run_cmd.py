"""``hpr run`` (execute the study's notebooks), ``hpr sweep`` (a grid of runs) and ``hpr book``
(build the Jupyter Book)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="execute the book's notebooks with papermill")
    run.add_argument(
        "--profile",
        default="cpu",
        help="parameter profile: cpu (default: the main study, what make book runs), cpu-extended (the extended notebook, hours) or gpu (every notebook)",
    )
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a notebook parameter (JSON value), e.g. -p model=org/name -p k=3",
    )
    run.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NOTEBOOK",
        help="run only this notebook (repeatable), e.g. --only 04_benchmarks",
    )
    run.add_argument("--force", action="store_true", help="re-execute notebooks that are up to date")
    run.add_argument("--root", default=".", help="repository root (default: .)")
    run.set_defaults(func=_run)

    sw = sub.add_parser("sweep", help="run a grid of study parameters as independent, resumable runs")
    sw.add_argument(
        "--file",
        default=None,
        metavar="SWEEP.yaml",
        help="a sweep file: profile, grid, parameters, only, executor, slurm (see README)",
    )
    sw.add_argument("--folder", default="runs/sweeps/sweep", metavar="DIR", help="where the runs go (one folder each)")
    sw.add_argument("--profile", default=None, help="parameter profile (default: the file's, else cpu)")
    sw.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a grid dimension (comma-separated values; one value: a fixed parameter), e.g. -p seed=0,1,2",
    )
    sw.add_argument("--only", action="append", default=None, metavar="NOTEBOOK", help="notebooks each run executes")
    sw.add_argument(
        "--executor",
        default=None,
        choices=("local", "slurm", "submitit-local"),
        help="local (default): one run after another here; slurm: a job array via submitit",
    )
    sw.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Slurm option for each job, e.g. --slurm partition=gpu --slurm gpus_per_node=1 "
        "--slurm time=240 (minutes) --slurm mem=64GB --slurm cpus_per_task=8",
    )
    sw.add_argument("--status", action="store_true", help="show each run's state from the files on disk and exit")
    sw.add_argument("--force", action="store_true", help="run every point again, also those done")
    sw.add_argument("--root", default=".", help="repository root (default: .)")
    sw.set_defaults(func=_sweep)

    book = sub.add_parser("book", help="build the Jupyter Book (warnings are errors, renders offline)")
    book.add_argument("--root", default=".", help="repository root (default: .)")
    book.add_argument("--runs", default="runs/book", help="results folder for the summary table")
    book.add_argument(
        "--sweep",
        default=None,
        metavar="DIR",
        help="show the results of this sweep folder (hpr sweep), aggregated over its runs, in the built "
        "book (the results table on disk is put back afterwards)",
    )
    book.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    book.set_defaults(func=_book)


def _run(args: argparse.Namespace) -> int:
    from hpr.study.profiles import parse_overrides
    from hpr.study.runner import run_study

    results = run_study(args.profile, parse_overrides(args.param), args.only, args.force, args.root)
    total = sum(r.seconds for r in results if r.status == "ran")
    print(f"{'notebook':<24} {'status':<8} {'seconds':>8}")
    for r in results:
        print(f"{r.name:<24} {r.status:<8} {r.seconds:>8.1f}" + (f"  cell {r.cell}: {r.error}" if r.error else ""))
    print(f"executed in {total:.1f} s")
    return 1 if any(r.status in {"failed", "blocked"} for r in results) else 0


def _sweep(args: argparse.Namespace) -> int:
    from hpr.errors import ParameterError
    from hpr.study.profiles import parse_overrides
    from hpr.study.sweep import (
        SLURM_OPTIONS,
        SweepSpec,
        parse_grid,
        read_spec,
        run_sweep,
        status_table,
        sweep_status,
    )

    spec = read_spec(args.file) if args.file else SweepSpec()
    if args.profile:
        spec.profile = args.profile
    grid = parse_grid(args.param)
    spec.grid.update({k: v for k, v in grid.items() if len(v) > 1})
    spec.parameters.update({k: v[0] for k, v in grid.items() if len(v) == 1})
    if args.only:
        spec.only = list(args.only)
    if args.executor:
        spec.executor = args.executor
    slurm = parse_overrides(args.slurm)
    bad = set(slurm) - set(SLURM_OPTIONS)
    if bad:
        raise ParameterError(f"unknown --slurm option(s) {sorted(bad)}; known: {', '.join(SLURM_OPTIONS)}")
    spec.slurm.update(slurm)
    if args.status:
        print(status_table(sweep_status(args.folder)))
        return 0
    rows = run_sweep(spec, args.folder, args.root, force=args.force)
    print(status_table(rows))
    return 1 if any(r["state"] != "done" for r in rows) else 0


def _book(args: argparse.Namespace) -> int:
    from hpr.study.book import build_book

    result = build_book(args.root, strict=not args.no_strict, runs_dir=args.runs, sweep=args.sweep)
    print(f"built {result.pages} pages in {result.seconds:.1f} s: {result.html / 'index.html'}")
    return 0
