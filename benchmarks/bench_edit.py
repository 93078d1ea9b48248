"""Edit overhead: whole-model forward with k HPR editors vs the same model unedited (CPU).

Three variants of one model run interleaved in one process: ``plain`` (no hooks), ``hpr``
(``hpr.EditorSet.apply``, the library's path) and ``reference`` (the paper's reference design,
``benchmarks/reference.py``, through the same hooks). Editors are randomly initialised
``hpr.editor.HPR`` modules (about half of all tokens are then edited; the path computes every
token either way). Shapes: prefill ``batch x seq`` tokens; decode ``batch`` sequences, one new
token each on a KV cache of ``seq`` tokens. Also the edit alone vs one decoder block (same input),
the per-layer cost ratio the paper's anchor quotes. Prints JSON.

    python benchmarks/bench_edit.py [--repeats 5] [--decode-repeats 100] [--no-reference] [--compiled]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import alternate, bench_model, emit, median, overhead, paired_overhead, setup_threads


def editor_set(model: Any, k: int, seed: int = 0) -> Any:
    """``k`` random HPR editors on evenly spaced layers of ``model``, as an ``EditorSet``."""
    import torch

    from hpr import EditorSet
    from hpr.editor import HPR
    from hpr.lm.architectures import fingerprint, hidden_size, num_layers

    n, d = num_layers(model), hidden_size(model)
    layers = [round((i + 1) * n / (k + 1)) for i in range(k)]
    torch.manual_seed(seed)
    eds = {i: HPR(d).to(next(model.parameters()).device) for i in layers}
    return EditorSet(eds, fingerprint(model), selected=layers)


def _reference_ctx(model: Any, es: Any) -> Any:
    from reference import ReferenceCall

    from hpr.lm.hooks import edit_block_outputs

    return edit_block_outputs(model, {i: ReferenceCall(es.editors[i]) for i in es.selected})


def summarize(t: dict[str, list[float]]) -> dict[str, Any]:
    """Medians of interleaved timings ``t`` (name -> seconds) and each variant's overhead over
    ``plain``: ratio of medians (``overhead_<name>``) and median of paired ratios (``_paired``)."""
    out: dict[str, Any] = {"median_s": {n: median(v) for n, v in t.items()}}
    for n, v in t.items():
        if n != "plain":
            out[f"overhead_{n}"] = overhead(v, t["plain"])
            out[f"overhead_{n}_paired"] = paired_overhead(v, t["plain"])
    return out


def layer_timer(block: Any) -> tuple[list[float], Any]:
    """Hooks on ``block`` that append the seconds of each of its forward calls to a list."""
    times: list[float] = []
    start: list[float] = []

    def pre(_m: Any, _a: Any) -> None:
        start.append(time.perf_counter())

    def post(_m: Any, _a: Any, _o: Any) -> None:
        times.append(time.perf_counter() - start.pop())

    handles = [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    return times, handles


def run(
    batch: int = 8,
    seq: int = 256,
    k: int = 5,
    repeats: int = 5,
    decode_repeats: int = 100,
    reference: bool = True,
    compiled: bool = False,
) -> dict[str, Any]:
    import torch

    from hpr.lm.architectures import decoder_layers, hidden_size, num_layers

    threads = setup_threads()
    model, _tok, info = bench_model()
    es = editor_set(model, k)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    result: dict[str, Any] = {
        "benchmark": "edit_overhead",
        "device": "cpu",
        "threads": threads,
        **info,
        "num_layers": num_layers(model),
        "hidden_size": hidden_size(model),
        "edited_layers": es.selected,
        "k": k,
    }

    def plain() -> Any:
        with torch.no_grad():
            return model(ids)

    def ours() -> Any:
        with es.apply(model), torch.no_grad():
            return model(ids)

    def ref() -> Any:
        with _reference_ctx(model, es), torch.no_grad():
            return model(ids)

    def ours_compiled() -> Any:
        with es.apply(model, compiled=True), torch.no_grad():
            return model(ids)

    # Prefill: whole-model forward, full logits (as scoring does).
    fns = {"plain": plain, "hpr": ours}
    if reference:
        fns["reference"] = ref
    if compiled:
        fns["hpr_compiled"] = ours_compiled
        ours_compiled()  # compile outside the timings
    result["prefill"] = {"shape": [batch, seq], "repeats": repeats, **summarize(alternate(fns, repeats))}

    # Decode: one new token per sequence on a KV cache of `seq` tokens; the cache is cropped back.
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = out["cache"] if "cache" in out else out.past_key_values
    nxt = torch.randint(0, vocab, (batch, 1), generator=g)

    def step(ctx: Any) -> Any:
        def f() -> Any:
            with ctx(), torch.no_grad():
                o = model(nxt, cache=cache, use_cache=True)
            cache.crop(-nxt.shape[1])  # drop the new token again: every call sees `seq` cached
            return o

        return f

    import contextlib

    dfns = {"plain": step(contextlib.nullcontext), "hpr": step(lambda: es.apply(model))}
    if reference:
        dfns["reference"] = step(lambda: _reference_ctx(model, es))
    if compiled:
        dfns["hpr_compiled"] = step(lambda: es.apply(model, compiled=True))
        dfns["hpr_compiled"]()  # compile the decode shape outside the timings
    result["decode"] = {
        "batch": batch,
        "cache_tokens": seq,
        "repeats": decode_repeats,
        **summarize(alternate(dfns, decode_repeats, warmup=2)),
    }

    # The edit alone vs one decoder block, on the block's real input and output (prefill shape).
    block_i = es.selected[0]
    block = decoder_layers(model)[block_i]
    times, handles = layer_timer(block)
    captured: list[Any] = []
    h2 = block.register_forward_hook(lambda _m, _a, o: captured.append(o[0] if isinstance(o, tuple) else o))
    try:
        for _ in range(3):
            plain()
    finally:
        for h in (*handles, h2):
            h.remove()
    x = captured[-1].detach()
    editor = es.editors[block_i]
    from reference import reference_edit

    efns = {"hpr": lambda: editor.edit(x)}
    if reference:
        efns["reference"] = lambda: reference_edit(editor, x)
    with torch.no_grad():
        te = alternate(efns, max(5, repeats * 2), warmup=1)
    layer_s = median(times)
    result["per_layer"] = {
        "shape": list(x.shape),
        "decoder_block_median_s": layer_s,
        "edit_median_s": {n: median(v) for n, v in te.items()},
        "edit_over_block": {n: median(v) / layer_s for n, v in te.items()},
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decode-repeats", type=int, default=100)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument(
        "--compiled",
        action="store_true",
        help="add an hpr_compiled row (EditorSet.apply(compiled=True); compiles first)",
    )
    a = ap.parse_args()
    emit(run(a.batch, a.seq, a.k, a.repeats, a.decode_repeats, not a.no_reference, a.compiled))


if __name__ == "__main__":
    main()
