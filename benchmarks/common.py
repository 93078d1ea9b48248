"""Shared helpers for the CPU benchmarks: threads, alternating timed runs, the benchmark model.

Every benchmark prints one JSON object; times are wall-clock seconds (``time.perf_counter``)
and every figure is a median over repeats. Runs that are compared (edited vs unedited) are
interleaved so that load from other processes on the machine hits both alike.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

#: CPU benchmarks use this many threads (the dev machine has 2 cores, shared).
THREADS = int(os.environ.get("HPR_BENCH_THREADS", "2"))

#: SmolLM2-135M's shape, for a random stand-in when the embedded model is unavailable.
SMOLLM2_SHAPE = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
}


def setup_threads(n: int = THREADS) -> int:
    """Pin torch (and OpenMP) to ``n`` threads; returns ``n``."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(n)
    return n


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each of ``fns`` ``repeats`` times, interleaved (a, b, a, b, ...) after ``warmup`` rounds.

    The order inside a round flips every round so neither side always runs first.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            out[n].append(timed(fns[n]))
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def overhead(edited: list[float], plain: list[float]) -> float:
    """Relative overhead of the medians, ``median(edited) / median(plain) - 1``."""
    return median(edited) / median(plain) - 1.0


def paired_overhead(edited: list[float], plain: list[float]) -> float:
    """Median of per-round ratios ``edited[i] / plain[i] - 1`` (robust to slow drifts in load)."""
    return float(statistics.median(e / p for e, p in zip(edited, plain, strict=True))) - 1.0


def bench_model(name: str = "smollm2-135m-instruct") -> tuple[Any, Any, dict[str, Any]]:
    """The embedded model ``name`` in eval mode, or a random model of SmolLM2's shape.

    Returns ``(model, tokenizer, info)``; ``info["model"]`` says which one was used and why
    (the random stand-in has no tokenizer: ``None``).
    """
    import torch

    try:
        from hpr.lm.models import load_model

        model, tok = load_model(name)
        model.eval()
        return model, tok, {"model": name, "random_weights": False, "dtype": str(next(model.parameters()).dtype)}
    except Exception as exc:  # noqa: BLE001 - fall back to the same shape with random weights
        reason = f"{type(exc).__name__}: {exc}"[:200]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SMOLLM2_SHAPE, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    return (
        model,
        None,
        {
            "model": "random LlamaConfig of SmolLM2-135M's shape",
            "random_weights": True,
            "why_not_embedded": reason,
            "dtype": str(next(model.parameters()).dtype),
        },
    )


def emit(result: Mapping[str, Any]) -> None:
    """Print ``result`` as JSON on stdout."""
    import json

    print(json.dumps(result, indent=2, default=str))
