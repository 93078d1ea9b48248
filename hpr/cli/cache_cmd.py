"""``hpr cache``: list the activation caches (with sizes), remove them (all, or one model's)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("cache", help="list or remove cached activations (0.1-1 GB each)")
    p.add_argument("--clear", action="store_true", help="remove the listed caches")
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="only the caches of this model (its name as in the list, e.g. smollm2-135m-instruct)",
    )
    p.set_defaults(func=cache)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def cache(args: argparse.Namespace) -> int:
    from hpr._files import cache_dir
    from hpr.lm.activations import cached_captures

    root = cache_dir() / "activations"
    rows = [c for c in cached_captures(root) if args.model is None or c.model == args.model]
    if not rows:
        what = f" of model {args.model!r}" if args.model else ""
        print(f"no cached activations{what} under {root}")
        return 0
    print(f"{'model':<28} {'dataset':<11} {'split':<5} {'layers':>6} {'tokens':>8} {'size':>10}  file")
    for c in rows:
        print(
            f"{c.model:<28} {c.dataset:<11} {c.split:<5} {c.layers:>6} {c.tokens:>8} {_mib(c.size):>10}  {c.path.name}"
        )
    total = sum(c.size for c in rows)
    if args.clear:
        for c in rows:
            c.path.unlink(missing_ok=True)
        print(f"removed {len(rows)} file(s), {_mib(total)}")
    else:
        print(f"{len(rows)} file(s), {_mib(total)} under {root}; `hpr cache --clear` removes them")
    return 0
