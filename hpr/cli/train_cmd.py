"""``hpr train``: capture activations, train per-layer editors, select the top k, save."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hpr.cli.common import add_data_options, add_model_options, data_kwargs, model_kwargs
from hpr.cli.eval_cmd import method_name
from hpr.data.records import DATASETS
from hpr.methods.registry import HPR_FAMILY

#: Options that only HPR-family training reads, with their defaults (given with a baseline: refused).
HPR_ONLY = {"k": 5, "epochs": 5, "lr": 5e-4, "batch_size": 16, "layers": None, "prompt_format": "mc-letter"}


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train HPR editors (or a baseline) for a model on a dataset")
    p.add_argument("--model", required=True, help="embedded name, checkpoint dir, .gguf or hub id")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--out", required=True, metavar="DIR", help="directory to save the trained method in")
    p.add_argument(
        "--method",
        default="hpr",
        type=method_name,
        help=f"method to train: {', '.join(HPR_FAMILY)} (HPR editors), or a baseline: iti, diff, "
        "diff-mse, lora (default: hpr)",
    )
    hpr_only = "HPR family only"
    p.add_argument(
        "--k", type=int, default=None, help=f"number of layers to edit, top-k by val accuracy (5; {hpr_only})"
    )
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (5; {hpr_only})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (5e-4; {hpr_only})")
    p.add_argument("--batch-size", type=int, default=None, help=f"pairs per training step (16; {hpr_only})")
    p.add_argument("--layers", default=None, metavar="I,J,..", help=f"layers to train (all; {hpr_only})")
    p.add_argument(
        "--prompt-format", default=None, help=f"training prompt format, hpr.data.prompts (mc-letter; {hpr_only})"
    )
    add_data_options(p, seed_help="split, prompt-order and training seed (default: 0)")
    add_model_options(p)
    p.add_argument("--no-cache", action="store_true", help="recapture activations even if cached")
    p.set_defaults(func=_train)


def _layers(text: str | None) -> list[int] | None:
    from hpr.errors import ParameterError

    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ParameterError(f"--layers must be comma-separated integers, got {text!r}") from None


def accuracy_table(es: Any) -> str:
    """Per-layer validation probe accuracy and angle error; selected layers marked with *."""
    acc = es.val_accuracy
    err = {int(k): float(v) for k, v in es.config.get("val_angle_error", {}).items()}
    rank = {layer: i + 1 for i, layer in enumerate(es.selected)}
    lines = [f"{'layer':>5}  {'val_acc':>7}  {'angle_err(rad)':>14}  selected"]
    for layer in sorted(es.editors):
        mark = f"* #{rank[layer]}" if layer in rank else ""
        lines.append(f"{layer:>5}  {acc.get(layer, float('nan')):7.4f}  {err.get(layer, float('nan')):14.4f}  {mark}")
    return "\n".join(lines)


def _train(args: argparse.Namespace) -> int:
    from hpr.data import datasets as data
    from hpr.errors import ParameterError
    from hpr.lm.models import load_model
    from hpr.lm.placement import model_device
    from hpr.methods import registry as methods
    from hpr.train import train_from_model

    given = [k for k in HPR_ONLY if getattr(args, k) is not None]
    if args.method not in HPR_FAMILY and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ParameterError(
            f"{flags} set(s) HPR training, not {args.method!r}, whose options are its own "
            "defaults (see hpr.methods); drop them, or train --method hpr"
        )
    for k, default in HPR_ONLY.items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    if args.k < 1:
        raise ParameterError(f"--k must be at least 1, got {args.k}")
    t0 = time.perf_counter()
    kw = data_kwargs(args)
    train_recs = data.load_split(args.dataset, "train", **kw)
    val_recs = data.load_split(args.dataset, "val", **kw)
    print(f"data: {args.dataset} train={len(train_recs)} val={len(val_recs)} questions", flush=True)
    model, tok = load_model(args.model, **model_kwargs(args))
    out = Path(args.out)
    if args.method not in HPR_FAMILY:
        fit = getattr(methods, "fit_method", None)
        if fit is None:
            raise ParameterError(
                f"method {args.method!r} needs hpr.methods.registry.fit_method, which this "
                "installation lacks; use --method hpr"
            )
        spec = methods.parse_method(args.method)
        fit(
            spec.family,
            model=model,
            tokenizer=tok,
            train=train_recs,
            val=val_recs,
            out=out,
            seed=args.seed,
            dataset=args.dataset,
            **spec.fit_options,
        )
        print(f"saved {args.method} to {out} ({time.perf_counter() - t0:.1f} s)")
        return 0
    es = train_from_model(
        model,
        tok,
        train_recs,
        val_recs,
        layers=_layers(args.layers),
        k=args.k,
        prompt_format=args.prompt_format,
        seed=args.seed,
        dataset=args.dataset,
        cache=not args.no_cache,
        name=args.model,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        device=model_device(model),
        **methods.HPR_TRAIN_OPTIONS[args.method],
    )
    if args.method == "hpr-noangle":
        es = es.with_angle(False)
    es.config["method"] = args.method
    es.config["total_seconds"] = round(time.perf_counter() - t0, 1)
    es.save(out)
    print(accuracy_table(es))
    print(
        f"train pairs: {es.config['train_pairs']}  val pairs: {es.config['val_pairs']}  "
        f"train tokens: {es.config['train_tokens']}"
    )
    print(f"selected layers (top {args.k}): {es.selected}")
    print(f"saved {args.method} editors to {out} ({es.config['total_seconds']:.1f} s)")
    return 0
