"""Where the decode-time edit cost goes: one edit inside the forward pass vs the same edit alone (CPU).

On the embedded SmolLM2 with k random HPR editors, one decode step (batch x 1 token on a KV cache
of ``seq`` tokens) is run repeatedly with hooks that time each ``HPR.edit`` call where it happens,
between decoder blocks. The same edits are then timed alone, in a tight loop, on the very inputs
they saw. The ratio shows how much more each small tensor operation costs inside the model (cold
caches) than its isolated timing suggests. Prints JSON (microseconds, medians).

    python benchmarks/profile_edit.py [--steps 40] [--batch 8] [--seq 256] [--k 5]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench_edit import editor_set
from common import bench_model, emit, median, setup_threads


def run(steps: int = 40, batch: int = 8, seq: int = 256, k: int = 5) -> dict[str, Any]:
    import torch

    from hpr.editor_set import _EditCall
    from hpr.lm.hooks import edit_block_outputs

    threads = setup_threads()
    model, _tok, info = bench_model()
    es = editor_set(model, k)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    nxt = torch.randint(0, model.config.vocab_size, (batch, 1), generator=g)
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = out["cache"] if "cache" in out else out.past_key_values

    in_model: list[float] = []
    seen: dict[int, Any] = {}

    calls = {i: _EditCall(es.editors[i]) for i in es.selected}  # what EditorSet.apply hooks in

    def timed(i: int) -> Any:
        editor = calls[i]

        def edit(x: Any) -> Any:
            seen[i] = x.detach().clone()
            t0 = time.perf_counter()
            y = editor(x)
            in_model.append(time.perf_counter() - t0)
            return y

        return edit

    with torch.no_grad():
        for _ in range(steps):
            with edit_block_outputs(model, {i: timed(i) for i in es.selected}):
                model(nxt, cache=cache, use_cache=True)
            cache.crop(-1)
        alone: list[float] = []
        for _ in range(steps):
            for i in es.selected:
                t0 = time.perf_counter()
                calls[i](seen[i])
                alone.append(time.perf_counter() - t0)
    inside, isolated = median(in_model) * 1e6, median(alone) * 1e6
    return {
        "benchmark": "edit_profile",
        "device": "cpu",
        "threads": threads,
        **info,
        "k": k,
        "batch": batch,
        "cache_tokens": seq,
        "steps": steps,
        "edit_in_model_us": inside,
        "edit_alone_us": isolated,
        "in_model_over_alone": inside / isolated,
        "edits_per_step_ms": inside * k / 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--k", type=int, default=5)
    a = ap.parse_args()
    emit(run(a.steps, a.batch, a.seq, a.k))


if __name__ == "__main__":
    main()
