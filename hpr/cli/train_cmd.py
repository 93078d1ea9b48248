"""``hpr train``: capture activations, train per-layer editors, select the top k, save."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import add_data_options, add_model_options, data_kwargs, model_kwargs
from .eval_cmd import method_name


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train HPR editors (or a baseline) for a model on a dataset")
    p.add_argument("--model", required=True, help="embedded name, checkpoint dir, .gguf or hub id")
    p.add_argument("--dataset", required=True, choices=("truthfulqa", "toxigen", "bbq", "seq"))
    p.add_argument("--out", required=True, metavar="DIR", help="directory to save the trained method in")
    p.add_argument("--method", default="hpr", type=method_name,
                   help="method to train: hpr, hpr-noangle, hpr-unit, iti[-k<heads>], diff, diff-mse, lora (default: hpr)")
    p.add_argument("--k", type=int, default=5, help="number of layers to edit (top-k by val accuracy)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=16, help="pairs per training step")
    p.add_argument("--layers", default=None, metavar="I,J,..", help="layers to train (default: all)")
    p.add_argument("--prompt-format", default="mc-letter", help="training prompt format (hpr.prompts)")
    add_data_options(p, seed_help="split, prompt-order and training seed (default: 0)")
    add_model_options(p)
    p.add_argument("--no-cache", action="store_true", help="recapture activations even if cached")
    p.set_defaults(func=_train)


def _layers(text: str | None) -> list[int] | None:
    from ..errors import ParameterError

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
    from .. import data, methods
    from ..errors import ParameterError
    from ..models import load_model
    from ..train import train_from_model

    if args.k < 1:
        raise ParameterError(f"--k must be at least 1, got {args.k}")
    t0 = time.perf_counter()
    kw = data_kwargs(args)
    train_recs = data.load_split(args.dataset, "train", **kw)
    val_recs = data.load_split(args.dataset, "val", **kw)
    print(f"data: {args.dataset} train={len(train_recs)} val={len(val_recs)} questions", flush=True)
    model, tok = load_model(args.model, **model_kwargs(args))
    out = Path(args.out)
    if args.method not in methods.HPR_FAMILY:
        fit = getattr(methods, "fit_method", None)
        if fit is None:
            raise ParameterError(f"method {args.method!r} needs hpr.methods.fit_method, which this "
                                 "installation lacks; use --method hpr")
        spec = methods.parse_method(args.method)
        fit(spec.family, model=model, tokenizer=tok, train=train_recs, val=val_recs, out=out,
            seed=args.seed, dataset=args.dataset, **spec.fit_options)
        print(f"saved {args.method} to {out} ({time.perf_counter() - t0:.1f} s)")
        return 0
    es = train_from_model(
        model, tok, train_recs, val_recs, layers=_layers(args.layers), k=args.k,
        prompt_format=args.prompt_format, seed=args.seed, dataset=args.dataset,
        cache=not args.no_cache, name=args.model, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, device=next(model.parameters()).device,
        **methods.HPR_TRAIN_OPTIONS[args.method],
    )
    if args.method == "hpr-noangle":
        es = es.with_angle(False)
    es.config["method"] = args.method
    es.config["total_seconds"] = round(time.perf_counter() - t0, 1)
    es.save(out)
    print(accuracy_table(es))
    print(f"train pairs: {es.config['train_pairs']}  val pairs: {es.config['val_pairs']}  "
          f"train tokens: {es.config['train_tokens']}")
    print(f"selected layers (top {args.k}): {es.selected}")
    print(f"saved {args.method} editors to {out} ({es.config['total_seconds']:.1f} s)")
    return 0
