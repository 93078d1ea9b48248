"""``hpr fetch`` (embedded models + BIG-bench data, once) and ``hpr datasets`` (split sizes)."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from hpr.data.datasets import SOURCES, dataset_info
from hpr.data.records import DATASETS
from hpr.errors import ModelError, ParameterError
from hpr.lm.models import EMBEDDED, load_model, model_cache_dir


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    f = sub.add_parser(
        "fetch", help="install/cache the embedded models and unpack the BIG-bench task files hpr carries"
    )
    f.add_argument(
        "--models",
        nargs="*",
        metavar="NAME",
        choices=sorted(EMBEDDED),
        default=None,
        help=f"embedded models to fetch (default: all: {', '.join(EMBEDDED)}); "
        "pass --models with no name to skip models",
    )
    f.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help="fetch the embedded models that this study profile uses (e.g. cpu: SmolLM2 only)",
    )
    f.add_argument(
        "--no-models", action="store_true", help="fetch no embedded model (e.g. on a GPU machine that uses hub models)"
    )
    f.add_argument("--no-data", action="store_true", help="do not fetch the BIG-bench task files")
    f.add_argument(
        "--data-dir", default=None, help="use task files from this folder instead of downloading (also HPR_DATA_DIR)"
    )
    f.set_defaults(func=fetch)
    d = sub.add_parser("datasets", help="list each dataset, its source and train/val/test sizes")
    d.add_argument("--source", choices=SOURCES, default=None, help="data source (default bigbench)")
    d.add_argument("--data-dir", default=None, help="data folder (also HPR_DATA_DIR)")
    d.add_argument("--seed", type=int, default=0, help="split seed")
    d.set_defaults(func=datasets)


def _size(path: Path) -> str:
    n = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{n / 2**20:.0f} MiB"


def _ensure_package(name: str) -> None:
    emb = EMBEDDED[name]
    if importlib.util.find_spec(emb.module) is not None:
        return
    cmd = [sys.executable, "-m", "pip", *emb.pip_args]
    print(f"installing {emb.package}=={emb.version}: {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise ModelError(
            f"pip could not install {emb.package}=={emb.version}; run `{emb.install}` "
            "yourself and check the package index"
        )
    importlib.invalidate_caches()


def fetch(args: argparse.Namespace) -> int:
    if args.no_models and args.models:
        raise ParameterError(f"--no-models and --models {' '.join(args.models)} contradict each other; drop one")
    if args.profile is not None and (args.models is not None or args.no_models):
        raise ParameterError("--profile chooses the models; drop --models/--no-models, or --profile")
    if args.profile is not None:
        from hpr.study.profiles import profile_parameters

        params = profile_parameters(args.profile)
        wanted = {*(params.get("models") or []), *(params.get("all_methods_models") or [])}
        names = [n for n in EMBEDDED if n in wanted]
    else:
        names = [] if args.no_models else list(EMBEDDED) if args.models is None else args.models
    for name in names:
        _ensure_package(name)
        t0 = time.perf_counter()
        model, _ = load_model(name, device="cpu", progress=lambda s: print(f"  {s}", flush=True))
        n = sum(p.numel() for p in model.parameters())
        cached = sorted(model_cache_dir().glob(f"{name}-*"))
        where = f"{cached[-1]} ({_size(cached[-1])})" if cached else str(model_cache_dir())
        print(
            f"model {name}: {n / 1e6:.0f}M parameters, ready in {time.perf_counter() - t0:.1f} s; cached at {where}",
            flush=True,
        )
        del model
    if not args.no_data:
        from hpr.data.bigbench import bigbench_tasks
        from hpr.data.datasets import resolve_data_dir
        from hpr.data.sources import bigbench_dir

        root = resolve_data_dir(args.data_dir)
        bb = bigbench_dir(root) if root is not None else bigbench_tasks(lambda s: print(f"  {s}", flush=True))
        print(f"data bigbench: task files at {bb} ({_size(bb)})", flush=True)
        for name in ("truthfulqa", "bbq", "seq"):
            info = dataset_info(name, source="bigbench", data_dir=args.data_dir)
            print(f"  {name}: {info.get('total', info.get('unavailable'))} examples", flush=True)
    return 0


def datasets(args: argparse.Namespace) -> int:
    print(f"{'dataset':<11} {'source':<9} {'train':>6} {'val':>6} {'test':>6}  origin")
    for name in DATASETS:
        info = dataset_info(name, source=args.source, data_dir=args.data_dir, seed=args.seed)
        if "unavailable" in info:
            print(f"{name:<11} {info['source']:<9} unavailable: {info['unavailable']}")
            continue
        skipped = f" ({info['skipped']} skipped)" if info["skipped"] else ""
        print(
            f"{name:<11} {info['source']:<9} {info['train']:>6} {info['val']:>6} {info['test']:>6}  "
            f"{info['origin']}{skipped}"
        )
    return 0
