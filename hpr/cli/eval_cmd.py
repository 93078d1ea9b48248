"""``hpr eval``: score a model (optionally edited) on a dataset split; write predictions + results."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hpr.cli.common import add_data_options, add_model_options, data_kwargs, model_kwargs
from hpr.data.records import DATASETS
from hpr.methods.registry import methods_help


def method_name(text: str) -> str:
    """argparse type: a method name ``hpr.methods.registry.parse_method`` accepts (e.g. ``iti-200-k48``)."""
    from hpr.errors import ParameterError
    from hpr.methods import parse_method

    try:
        return parse_method(text).name
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a model (and an editing method) on a dataset split or any lm-eval task")
    p.add_argument("--model", required=True, help="embedded name, checkpoint dir, .gguf or hub id")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="one of our datasets (or give --task)")
    p.add_argument(
        "--task",
        default=None,
        metavar="NAME|PATH.yaml",
        help="with --engine lm-eval: any lm-eval task, by name (lm-eval's registry) or task YAML path",
    )
    p.add_argument("--num-fewshot", type=int, default=None, help="--task: few-shot examples (default: the task's)")
    p.add_argument(
        "--method", default="base", type=method_name, help=f"editing method: {methods_help()}; default: base"
    )
    p.add_argument("--editors", default=None, metavar="DIR", help="directory the method was saved in")
    p.add_argument("--k", type=int, default=None, help="hpr, hpr-noangle, hpr-unit: edit only the top-k layers")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--engine", default="native", choices=("native", "lm-eval"))
    p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N examples only")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory (default: runs/eval/<model>/<dataset>-<split>/<method>-<engine>)",
    )
    add_data_options(p)
    add_model_options(p)
    p.add_argument(
        "--add-bos",
        default="tokenizer",
        choices=("tokenizer", "true", "false"),
        help="BOS token before each prompt: the tokenizer's default (lm-eval's), always one "
        "(true), or none (false, the paper authors' choice)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="questions/choices per forward pass")
    p.add_argument("--force", action="store_true", help="re-score even if a finished run exists")
    p.set_defaults(func=_eval)


_ADD_BOS: dict[str, bool | None] = {"tokenizer": None, "true": True, "false": False}


def default_out(args: argparse.Namespace) -> Path:
    name = args.method + (f"-k{args.k}" if args.k is not None else "") + f"-{args.engine}"
    if args.limit is not None:
        name += f"-n{args.limit}"
    for flag, value, default in (
        ("src", args.source, None),
        ("scheme", args.split_scheme, None),
        ("bos", args.add_bos, "tokenizer"),
    ):
        if value != default:
            name += f"-{flag}-{value}"
    from hpr._files import slug

    return Path("runs") / "eval" / slug(args.model) / f"{args.dataset}-{args.split}" / name


def load_method(name: str, directory: str | None, model: Any, k: int | None) -> Any:
    """The method ``name`` from ``directory``; ``k`` keeps the top-k layers of HPR editors."""
    from hpr.errors import ParameterError
    from hpr.methods import registry as methods

    spec = methods.parse_method(name)
    method: Any = methods.load_method(spec.family, directory, model, **spec.load_options)
    if k is not None:
        if spec.family not in methods.HPR_FAMILY:
            raise ParameterError(f"--k applies to {', '.join(methods.HPR_FAMILY)} only, not {name!r}; drop --k")
        method = method.top(k)
    return method


def _dir_hash(directory: str) -> str | None:
    """sha256 over the names and bytes of the files in ``directory`` (None if it is not a folder)."""
    from hpr._files import file_sha256, stable_hash

    d = Path(directory)
    if not d.is_dir():
        return None
    files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
    return stable_hash([[str(p.relative_to(d)), file_sha256(p)] for p in files])


def _eval(args: argparse.Namespace) -> int:
    from hpr.data import datasets as data
    from hpr.errors import ParameterError
    from hpr.evaluation.evaluate import evaluate
    from hpr.lm.architectures import weights_digest
    from hpr.lm.models import load_model

    if args.limit is not None and args.limit < 1:
        raise ParameterError(f"--limit must be a positive number of examples, got {args.limit}")
    if (args.task is None) == (args.dataset is None):
        raise ParameterError("give either --dataset (one of ours) or --task (any lm-eval task, with --engine lm-eval)")
    if args.task is not None:
        return _eval_task(args)
    records = data.load_split(args.dataset, args.split, **data_kwargs(args))
    if args.limit is not None:
        records = records[: args.limit]
    t0 = time.perf_counter()
    model, tok = load_model(args.model, **model_kwargs(args))
    method = load_method(args.method, args.editors, model, args.k)
    load_s = time.perf_counter() - t0
    out = Path(args.out) if args.out else default_out(args)
    config = {
        "model": args.model,
        "split": args.split,
        "method": args.method,
        "editors": str(Path(args.editors).resolve()) if args.editors else None,
        "k": args.k,
        "limit": args.limit,
        "seed": args.seed,
        "data_dir": args.data_dir,
        "source": args.source,
        **({"split_scheme": args.split_scheme} if args.split_scheme is not None else {}),
        # contents, not just names: a retrained editor dir or re-saved checkpoint is re-scored
        "model_weights": weights_digest(model),
        "editors_sha256": _dir_hash(args.editors) if args.editors else None,
    }
    res = evaluate(
        model,
        tok,
        args.dataset,
        records,
        out,
        method=method,
        engine=args.engine,
        batch_size=args.batch_size,
        config=config,
        force=args.force,
        timings={"load_s": round(load_s, 3)},
        add_bos=_ADD_BOS[args.add_bos],
    )
    for name, m in res["metrics"].items():
        print(f"{args.dataset} {name}: {m['value']:.4f} ± {m['stderr']:.4f} (n={m['n']})")
    print(f"score time {res['timings']['score_s']:.1f} s, {res.get('tokens')} tokens; wrote {out}")
    return 0


def _eval_task(args: argparse.Namespace) -> int:
    from hpr._files import slug
    from hpr.errors import ParameterError
    from hpr.evaluation.evaluate import evaluate_task
    from hpr.lm.architectures import weights_digest
    from hpr.lm.models import load_model

    if args.engine != "lm-eval":
        raise ParameterError("--task runs an lm-eval task: add --engine lm-eval")
    model, tok = load_model(args.model, **model_kwargs(args))
    method = load_method(args.method, args.editors, model, args.k)
    name = Path(args.task).stem if args.task.endswith((".yaml", ".yml")) else args.task
    out = Path(args.out) if args.out else Path("runs") / "eval" / slug(args.model) / f"task-{slug(name)}" / args.method
    config = {
        "model": args.model,
        "method": args.method,
        "k": args.k,
        "split": "lm-eval",
        "editors": str(Path(args.editors).resolve()) if args.editors else None,
        "model_weights": weights_digest(model),
        "editors_sha256": _dir_hash(args.editors) if args.editors else None,
    }
    res = evaluate_task(
        model,
        tok,
        args.task,
        out,
        method=method,
        limit=args.limit,
        batch_size=args.batch_size,
        config=config,
        force=args.force,
        add_bos=_ADD_BOS[args.add_bos],
        num_fewshot=args.num_fewshot,
    )
    for metric, m in res["metrics"].items():
        err = "" if m["stderr"] is None else f" ± {m['stderr']:.4f}"
        print(f"{args.task} {metric}: {m['value']:.4f}{err} (n={m['n']})")
    print(f"score time {res['timings']['score_s']:.1f} s, {res.get('tokens')} tokens; wrote {out}")
    return 0
