"""Options shared by the commands that load a model (``--device``, ``--dtype``, ``--device-map``)
or read a dataset (``--source``, ``--split-scheme``, ``--data-dir``, ``--seed``)."""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

from hpr.data.datasets import SOURCES

DTYPES = ("float32", "bfloat16", "float16")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--device-map``, ``--offload-folder`` (read back by ``model_kwargs``)."""
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="auto (CUDA when available, else CPU; default), cpu, cuda, cuda:N or mps",
    )
    p.add_argument(
        "--dtype", default=None, choices=DTYPES, help="model dtype (default: bfloat16 on CUDA, float32 on CPU)"
    )
    p.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="spread a model larger than one GPU over the visible devices (accelerate): "
        "auto, balanced, sequential or a JSON dict; replaces --device",
    )
    p.add_argument(
        "--offload-folder",
        default=None,
        metavar="DIR",
        help="with --device-map: where blocks mapped to the disk keep their weights",
    )


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``hpr.lm.models.load_model`` from the parsed model options."""
    from hpr.errors import ParameterError

    device_map: Any = args.device_map
    if isinstance(device_map, str) and device_map.lstrip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except json.JSONDecodeError as exc:
            raise ParameterError(
                f"--device-map {args.device_map!r} is not valid JSON ({exc}); "
                "write e.g. --device-map '{\"\": 0}' or --device-map auto"
            ) from exc
    return {
        "device": args.device,
        "dtype": args.dtype,
        "device_map": device_map,
        "offload_folder": args.offload_folder,
    }


def add_data_options(p: argparse.ArgumentParser, seed_help: str = "split seed (default: 0)") -> None:
    """``--source``, ``--split-scheme``, ``--data-dir``, ``--seed`` (read back by ``data_kwargs``)."""
    p.add_argument(
        "--source",
        default=None,
        choices=SOURCES,
        help="data source: bigbench (default; offline task files), hub or local (also HPR_DATA_SOURCE)",
    )
    p.add_argument(
        "--split-scheme",
        default=None,
        metavar="NAME",
        help="how the dataset is split into train/val/test (default: the data loader's)",
    )
    p.add_argument("--data-dir", default=None, metavar="DIR", help="raw data directory (also HPR_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def data_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``hpr.data.datasets.load_split``; ``scheme`` only when ``--split-scheme`` is given."""
    from hpr.data import datasets as data
    from hpr.errors import ParameterError

    kw: dict[str, Any] = {"source": args.source, "data_dir": args.data_dir, "seed": args.seed}
    if args.split_scheme is not None:
        if "scheme" not in inspect.signature(data.load_split).parameters:
            raise ParameterError(
                "--split-scheme needs hpr.data.datasets.load_split(..., scheme=), which this "
                "installation lacks; drop --split-scheme"
            )
        kw["scheme"] = args.split_scheme
    return kw
