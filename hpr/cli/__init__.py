"""The ``hpr`` command line. Each subcommand lives in a module of this package that defines
``register(subparsers)``; add its name to ``COMMAND_MODULES``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hpr.errors import HPRError

COMMAND_MODULES: tuple[str, ...] = ("run_cmd", "eval_cmd", "data_cmds", "train_cmd", "cache_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpr", description="Householder Pseudo-Rotation: train, evaluate, and build the book."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "eval"):
        import torch

        torch.set_flush_denormal(True)  # before any threaded op, so OpenMP workers inherit it (study.configure)
    try:
        return int(args.func(args) or 0)
    except HPRError as exc:
        print(f"hpr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpr: interrupted; finished artifacts are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
