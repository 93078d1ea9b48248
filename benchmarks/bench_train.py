"""Training: activation pairs per second over all layers, and time to train all layers (CPU).

Trains ``hpr.train.train`` (every captured layer at once, the paper's defaults unless
overridden) on TruthfulQA train activations: a capture file given with ``--capture``, else the
newest cached ``truthfulqa-train-*.safetensors`` of the embedded SmolLM2 (``hpr._files.cache_dir()``), else
synthetic activations of SmolLM2's shape (30 layers, d = 576) with TruthfulQA's answer counts.
``pairs_per_s`` counts one (negative, positive) pair through all layers, per epoch. Prints JSON.

    python benchmarks/bench_train.py [--capture FILE] [--epochs 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import emit, setup_threads


def cached_capture(model: str = "smollm2-135m-instruct") -> Path | None:
    """The cached TruthfulQA train capture of ``model`` (by its metadata) with the most layers
    (newest first among those), if any: the benchmark times training every layer."""
    import json

    from safetensors import safe_open

    from hpr import _files

    found = sorted(
        (_files.cache_dir() / "activations").glob("truthfulqa-train-*.safetensors"), key=lambda p: p.stat().st_mtime
    )
    best: tuple[int, Path] | None = None
    for path in reversed(found):
        try:
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("hpr", "{}"))
                layers = len(meta.get("layers") or []) or int(fh.get_slice(next(iter(fh.keys()))).get_shape()[0])
        except Exception:  # noqa: BLE001 - an unreadable cache entry is skipped
            continue
        if meta.get("model", {}).get("name") == model and (best is None or layers > best[0]):
            best = (layers, path)
    return best[1] if best else None


def synthetic_capture(
    questions: int = 120,
    layers: int = 30,
    d: int = 576,
    answer_tokens: int = 12,
    true: int = 3,
    false: int = 4,
    seed: int = 0,
) -> Any:
    """Random activations laid out like a capture: ``questions`` x (T + F) answers x tokens."""
    import torch

    from hpr.lm.capture import Captured

    g = torch.Generator().manual_seed(seed)
    per_q = true + false
    n_seq = questions * per_q
    rows = n_seq * answer_tokens
    seq = torch.arange(n_seq).repeat_interleave(answer_tokens)
    label = (seq % per_q < true).long()
    data = torch.randn(layers, rows, d, generator=g)
    return Captured(
        data,
        list(range(layers)),
        label,
        seq // per_q,
        seq,
        torch.arange(answer_tokens).repeat(n_seq),
        torch.randint(0, 49152, (rows,), generator=g),
        {"synthetic": True},
    )


def run(capture: str | None = None, epochs: int = 5, synthetic: bool = False) -> dict[str, Any]:
    from hpr.lm.capture import Captured
    from hpr.train import TrainConfig, train

    threads = setup_threads()
    path = None if synthetic else (Path(capture) if capture else cached_capture())
    cap = Captured.load(path) if path is not None else synthetic_capture()
    t0 = time.perf_counter()
    neg, _pos = cap.pairs()
    t_pairs = time.perf_counter() - t0
    t0 = time.perf_counter()
    es = train(cap, None, progress=False, epochs=epochs)
    t_train = time.perf_counter() - t0
    n = len(neg)
    return {
        "benchmark": "train",
        "device": "cpu",
        "threads": threads,
        "activations": str(path) if path is not None else "synthetic (SmolLM2 shape, TruthfulQA answer counts)",
        "layers": len(cap.layers),
        "hidden_size": cap.hidden_size,
        "rows": cap.num_tokens,
        "pairs": n,
        "epochs": epochs,
        "batch_size": TrainConfig().batch_size,
        "pair_finding_s": t_pairs,
        "train_all_layers_s": t_train,
        "pairs_per_s": n * epochs / t_train,
        "layer_pairs_per_s": n * epochs * len(cap.layers) / t_train,
        "selected": es.selected,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", default=None, help="a saved hpr.lm.capture file (safetensors)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--synthetic", action="store_true", help="ignore cached captures")
    a = ap.parse_args()
    emit(run(a.capture, a.epochs, a.synthetic))


if __name__ == "__main__":
    main()
