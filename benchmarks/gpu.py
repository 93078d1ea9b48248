"""GPU edit-overhead benchmark: a Llama-3-8B-shaped random model in bf16, ours vs reference vs unedited.

Needs only torch and transformers (plus this repository on ``sys.path``). Builds the model from
a config (random weights, no download), puts k = 5 random ``hpr.editor.HPR`` editors on evenly
spaced layers and times, interleaved, medians over repeats:
  - prefill: batch 8 x 512 tokens, whole-model forward;
  - decode: batch 32, one new token on a KV cache of 512 tokens, timed in blocks of
    ``DECODE_STEPS`` steps inside one editing context, as ``generate()`` runs them (entering the
    context, which registers the hooks, is paid once per block; times are per step);
  - decode at batch 1, the same way;
for ``plain`` (no hooks), ``hooks_only`` (hooks on the same blocks that return their input: what
the hooks alone cost, about 1 microsecond of host time each, ``benchmarks/host_cost.py``), ``hpr`` (``EditorSet.apply``: geometry in float32, the angle network
cast to the model's dtype), ``hpr_graphed`` (``apply(graphed=True)``: each few-row edit replayed
from a CUDA graph, ``hpr.lm.graphs``), ``hpr_compiled`` (``torch.compile``) and ``reference`` (the
paper's design, ``benchmarks/reference.py``: dense d x d fp32 Householder matrix per call, fp32
angle network, diag_embed masks). Also the whole decode step captured in one CUDA graph, the GPU
kernel time of an eager step, the edit alone vs one decoder block at prefill (the anchor:
reference 1.60x on an H100), the edit alone at decode shape timed once per call and back to back
(the throughput a host-bound decode step sees, against one copy's launch), and the agreement of our
edit with the reference on the tokens it edits. ``targets`` says whether ``hpr`` or ``hpr_graphed``
is at most 3% over ``plain`` in each case (issue 15). Writes ``benchmarks/results/gpu.json`` (``--out``) with the device name, after
every section (``"complete": false`` until the last, so a run cut short keeps what it measured);
``benchmarks/gpu_table.py`` renders the README's table from it; ``total_s`` in it is the run time.

``--tiny`` runs a small model on the CPU (or GPU if present) to check the script works; it
writes ``benchmarks/results/gpu-tiny.json`` and its numbers mean nothing.

    python benchmarks/gpu.py [--tiny] [--repeats 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

LLAMA3_8B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=128256,
    rope_theta=500000.0,
    max_position_embeddings=8192,
)
TINY = dict(
    hidden_size=256,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
    vocab_size=1000,
    max_position_embeddings=1024,
)
#: Decode steps per timed sample, inside one editing context (as in one ``generate()`` call).
DECODE_STEPS = 4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, list[float]]:
    """Interleaved timings (seconds) of each function, order flipped every round."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    sync(device)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            out[n].append(time.perf_counter() - t0)
    return out


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def summary(t: dict[str, list[float]], per: int = 1) -> dict[str, Any]:
    """Medians (seconds, divided by ``per``: the steps each timing covers) and overheads over ``plain``."""
    base = med(t["plain"])
    return {
        "median_s": {n: med(v) / per for n, v in t.items()},
        "overhead": {n: med(v) / base - 1.0 for n, v in t.items() if n != "plain"},
        "overhead_paired": {
            n: float(statistics.median(a / b for a, b in zip(v, t["plain"], strict=True))) - 1.0
            for n, v in t.items()
            if n != "plain"
        },
    }


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """The random model, initialised here (normal(0, 0.02) matrices, unit norm weights) so that
    no weight is left as uninitialised memory, whatever the transformers version does on a device."""
    cfg = LlamaConfig(**(TINY if tiny else LLAMA3_8B))
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.to(dtype).eval()


def editors(model: Any, k: int, dtype: torch.dtype, device: torch.device) -> tuple[Any, dict[int, Any]]:
    """Our ``EditorSet`` (angle network in ``dtype``) and fp32 copies for the reference design."""
    from hpr import EditorSet
    from hpr.editor import HPR
    from hpr.lm.architectures import fingerprint, hidden_size, num_layers

    n, d = num_layers(model), hidden_size(model)
    layers = [round((i + 1) * n / (k + 1)) for i in range(k)]
    torch.manual_seed(1)
    ours, ref = {}, {}
    for i in layers:
        e = HPR(d).to(device)
        ref[i] = copy.deepcopy(e)  # float32 throughout, as the reference code
        e.angle.to(dtype)  # the angle network in the model's dtype; the probe normal stays fp32
        ours[i] = e
    return EditorSet(ours, fingerprint(model), selected=layers), ref


def block_inputs(model: Any, layer: int, ids: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """The args, kwargs and output of decoder block ``layer`` during a forward of ``ids``."""
    from hpr.lm.architectures import decoder_layers

    block = decoder_layers(model)[layer]
    got: dict[str, Any] = {}

    def pre(_m: Any, args: Any, kwargs: Any) -> None:
        got["args"], got["kwargs"] = args, dict(kwargs)

    def post(_m: Any, _a: Any, out: Any) -> None:
        got["out"] = out[0] if isinstance(out, tuple) else out

    hs = [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(ids, use_cache=False)  # no cache in the kwargs: repeated block calls stay the same size
    finally:
        for h in hs:
            h.remove()
    return got["args"], got["kwargs"], got["out"]


def cuda_graph_check(editor: Any, x: torch.Tensor) -> dict[str, Any]:
    """Replay ``editor.edit`` from a CUDA graph at a fixed shape (``hpr.lm.graphs.GraphedEdit``, as
    ``apply(graphed=True)`` does); the replay of new input must equal the eager edit."""
    if x.device.type != "cuda":
        return {"capturable": None, "why": "no CUDA device"}
    from hpr.lm.graphs import GraphedEdit

    graphed_edit = GraphedEdit(editor.edit, min_seen=1)
    with torch.no_grad():
        graphed_edit(x)  # captured here
        out = graphed_edit(x * 1.5)  # replayed
        want = editor.edit(x * 1.5)
    torch.cuda.synchronize()
    if graphed_edit.failed is not None or not graphed_edit.graphs:
        return {"capturable": False, "why": graphed_edit.failed}
    return {
        "capturable": True,
        "replay_equals_eager": bool(torch.equal(out, want)),
        "max_abs_diff": float((out.float() - want.float()).abs().max()),
    }


def static_decode_step(
    model: Any, batch: int, seq: int, device: torch.device, g: torch.Generator, cache_kw: str
) -> Callable[[], Any]:
    """One decode step (``batch`` x 1 token) on a ``StaticCache`` that holds ``seq`` prompt tokens,
    replayable and capturable in a CUDA graph. Every call writes slot ``seq`` (the cache holds
    ``seq + 1``), so any number of replays attends over the same context: where the model takes
    ``cache_position`` (older transformers) the call says so; otherwise the cache advances its own
    position on the device and the step rewinds it after the forward, one fused launch that a
    graph captures with the step."""
    import inspect

    from transformers import StaticCache

    vocab = model.config.vocab_size
    explicit = "cache_position" in inspect.signature(model.forward).parameters
    cache = StaticCache(config=model.config, max_cache_len=seq + 1)
    prompt = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    pre = {"cache_position": torch.arange(seq, device=device)} if explicit else {}
    with torch.no_grad():
        model(prompt, **{cache_kw: cache}, **pre, use_cache=True)
    nxt = torch.randint(0, vocab, (batch, 1), generator=g).to(device)
    kw = {"cache_position": torch.tensor([seq], device=device)} if explicit else {}
    lengths = [] if explicit else [layer.cumulative_length for layer in cache.layers]

    def step() -> Any:
        logits = model(nxt, **{cache_kw: cache}, **kw, use_cache=True).logits
        if lengths:
            torch._foreach_sub_(lengths, 1)
        return logits

    return step


def graphed(step: Callable[[], Any], ctx: Callable[[], Any]) -> Callable[[], Any]:
    """``step`` (run inside ``ctx``, e.g. with the editing hooks) captured in a CUDA graph."""
    with ctx(), torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    return graph.replay


def kernel_time_per_call(fn: Callable[[], Any], calls: int = 10) -> float:
    """Seconds of GPU kernel time per call of ``fn`` (sum over kernels, torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / 1e6 / calls


def run(tiny: bool, repeats: int, k: int = 5, save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The benchmark's results; ``save(partial)`` is called after each section (``"complete": False``
    until the end), so that a run stopped by a time limit keeps the sections it finished."""
    from reference import ReferenceCall, reference_edit

    from hpr.lm.hooks import edit_block_outputs

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    t_start = time.perf_counter()
    model = build(tiny, device, dtype)
    es, ref_eds = editors(model, k, dtype, device)
    batch, seq, dbatch = (2, 32, 4) if tiny else (8, 512, 32)
    vocab = model.config.vocab_size
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)

    def ctx(kind: str) -> Any:
        if kind == "hpr":
            return es.apply(model)
        if kind == "hpr_graphed":
            return es.apply(model, graphed=True)
        if kind == "hooks_only":
            return edit_block_outputs(model, dict.fromkeys(es.selected, _same))
        if kind == "hpr_compiled":
            return es.apply(model, compiled=True)
        if kind == "reference":
            return edit_block_outputs(model, {i: ReferenceCall(ref_eds[i]) for i in es.selected})
        return contextlib.nullcontext()

    def prefill(kind: str) -> Callable[[], Any]:
        def f() -> Any:
            with ctx(kind), torch.no_grad():
                return model(ids, use_cache=False)

        return f

    kinds = ("plain", "hooks_only", "hpr", "hpr_graphed", "hpr_compiled", "reference")
    t_compile = time.perf_counter()
    with es.apply(model, compiled=True), torch.no_grad():  # compile outside the timings
        model(ids, use_cache=False)
    compile_s = time.perf_counter() - t_compile
    result: dict[str, Any] = {
        "benchmark": "edit_overhead_gpu",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})",
        "tiny": tiny,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "dtype": str(dtype),
        "config": TINY if tiny else LLAMA3_8B,
        "edited_layers": es.selected,
        "k": k,
        "compile_s_prefill_shape": compile_s,
    }
    result["prefill"] = {
        "shape": [batch, seq],
        "repeats": repeats,
        **summary(alternate({n: prefill(n) for n in kinds}, repeats, device)),
    }

    def checkpoint() -> None:
        if save is not None:
            save({**result, "complete": False, "elapsed_s": time.perf_counter() - t_start})

    checkpoint()

    dids = torch.randint(0, vocab, (dbatch, seq), generator=g).to(device)
    with torch.no_grad():
        logits = model(ids[:1], use_cache=False).logits
    result["finite_logits"] = bool(torch.isfinite(logits).all())

    import inspect

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def decoder(rows: torch.Tensor) -> Callable[[str], Callable[[], Any]]:
        """``DECODE_STEPS`` steps of one new token per row of ``rows`` (batch, seq) on a KV cache of
        ``seq`` tokens (cropped back after each step), inside one editing context."""
        with torch.no_grad():
            out = model(rows, use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        nxt = torch.randint(0, vocab, (rows.shape[0], 1), generator=g).to(device)

        def decode(kind: str) -> Callable[[], Any]:
            def f() -> Any:
                with ctx(kind), torch.no_grad():
                    for _ in range(DECODE_STEPS):
                        o = model(nxt, **{cache_kw: cache}, use_cache=True)
                        cache.crop(-1)
                return o

            return f

        return decode

    decode = decoder(dids)
    t_compile = time.perf_counter()
    decode("hpr_compiled")()  # compile the decode shape outside the timings
    sync(device)
    result["compile_s_decode_shape"] = time.perf_counter() - t_compile
    result["decode"] = {
        "batch": dbatch,
        "cache_tokens": seq,
        "repeats": repeats * 2,
        "steps_per_repeat": DECODE_STEPS,
        **summary(alternate({n: decode(n) for n in kinds}, repeats * 2, device), DECODE_STEPS),
    }
    checkpoint()
    decode1 = decoder(dids[:1])
    decode1("hpr_compiled")()
    result["decode_batch1"] = {
        "batch": 1,
        "cache_tokens": seq,
        "repeats": repeats * 2,
        "steps_per_repeat": DECODE_STEPS,
        **summary(alternate({n: decode1(n) for n in kinds}, repeats * 2, device), DECODE_STEPS),
    }
    # the graphs hpr_graphed kept per edited layer (0 on the CPU): its decode timings replayed them
    result["hpr_graphed_graphs"] = {str(i): len(g.graphs) for (i, _), g in es._graphs.items()}
    checkpoint()

    # Decode as serving stacks run it: a StaticCache and the whole step in one CUDA graph, so the
    # host's per-kernel launch cost (which dominates the eager rows above) is gone. Plus the GPU
    # kernel time per eager step (what a graph replays).
    if device.type == "cuda":
        graph_res: dict[str, Any] = {}
        try:
            sstep = static_decode_step(model, dbatch, seq, device, g, cache_kw)
            replays = {n: graphed(sstep, (lambda n=n: ctx(n))) for n in ("plain", "hpr", "hpr_graphed", "hpr_compiled")}
            graph_res = {"repeats": repeats * 3, **summary(alternate(replays, repeats * 3, device))}
        except Exception as exc:  # noqa: BLE001 - report why, keep the other rows
            graph_res = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        result["decode_cuda_graph_step"] = graph_res
        try:
            kt = {
                n: kernel_time_per_call(decode(n)) / DECODE_STEPS for n in ("plain", "hpr", "hpr_compiled", "reference")
            }
            result["decode_kernel_time"] = {
                "seconds_per_step": kt,
                "overhead": {n: v / kt["plain"] - 1.0 for n, v in kt.items() if n != "plain"},
            }
        except Exception as exc:  # noqa: BLE001
            result["decode_kernel_time"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        checkpoint()

    # The edit alone vs one decoder block (prefill shape), like the anchor's per-layer ratio.
    layer = es.selected[0]
    args, kwargs, x = block_inputs(model, layer, ids)
    from hpr.lm.architectures import decoder_layers

    block = decoder_layers(model)[layer]
    ours_e, ref_e = es.editors[layer], ref_eds[layer]
    with torch.no_grad():
        t = alternate(
            {
                "block": lambda: block(*args, **kwargs),
                "hpr": lambda: ours_e.edit(x),
                "hpr_compiled": lambda: ours_e.edit(x, compiled=True),
                "reference": lambda: reference_edit(ref_e, x),
            },
            repeats,
            device,
        )
    b = med(t["block"])
    rows = ("hpr", "hpr_compiled", "reference")
    mean_layer = result["prefill"]["median_s"]["plain"] / model.config.num_hidden_layers
    result["per_layer_prefill"] = {
        "shape": list(x.shape),
        "decoder_block_median_s": b,
        "edit_median_s": {n: med(t[n]) for n in rows},
        "edit_over_block": {n: med(t[n]) / b for n in rows},
        "mean_layer_s": mean_layer,
        "edit_over_mean_layer": {n: med(t[n]) / mean_layer for n in rows},
    }
    with torch.no_grad():
        _, _, xd = block_inputs(model, layer, dids[:, :1])
    from hpr.lm.graphs import GraphedEdit

    graphed_e = GraphedEdit(ours_e.edit, min_seen=1)
    with torch.no_grad():
        t = alternate(
            {
                "hpr": lambda: ours_e.edit(xd),
                "hpr_graphed": lambda: graphed_e(xd),
                "hpr_compiled": lambda: ours_e.edit(xd, compiled=True),
                "reference": lambda: reference_edit(ref_e, xd),
            },
            repeats * 3,
            device,
        )
    result["per_layer_decode_edit_median_s"] = {n: med(v) for n, v in t.items()}
    # Back-to-back calls, synchronised only around each loop: per call, the larger of the host's
    # launch time and the GPU's time, which is what an edit adds to a host-bound decode step.
    # ``copy`` (one clone of the input: one launch) is the unit a launch costs.
    loops = {
        "copy": lambda: xd.clone(),
        "hpr": lambda: ours_e.edit(xd),
        "hpr_graphed": lambda: graphed_e(xd),
    }
    with torch.no_grad():
        t = alternate({n: _loop(f, LOOP_CALLS) for n, f in loops.items()}, repeats, device)
    result["per_layer_decode_edit_back_to_back_s"] = {n: med(v) / LOOP_CALLS for n, v in t.items()}
    checkpoint()
    result["decode_cuda_graph"] = cuda_graph_check(ours_e, xd)
    # agreement of our path and the reference on this model's activations (bf16 output); x and -x,
    # so that about half of the tokens are negatives whatever side of the random probe they are on
    with torch.no_grad():
        xx = torch.cat([x, -x])
        a, r = ours_e.edit(xx).float(), reference_edit(ref_e, xx).float()
        edited = (ours_e.logits(xx) < 0) & torch.isfinite(r).all(-1)
        negatives = ours_e.logits(xx) < 0
    rel = ((a - r).norm(dim=-1) / xx.float().norm(dim=-1).clamp_min(1e-30))[edited]
    result["hpr_vs_reference_edited_tokens"] = int(edited.sum())
    result["hpr_vs_reference_tokens"] = {  # why a comparison might cover few tokens
        "all": int(negatives.numel()),
        "finite_input": int(torch.isfinite(xx).all(-1).sum()),
        "negatives": int(negatives.sum()),
        "reference_finite": int(torch.isfinite(r).all(-1).sum()),
    }
    result["hpr_vs_reference_median_rel_diff"] = float(rel.median()) if rel.numel() else None
    result["targets"] = targets(result)
    result["total_s"] = time.perf_counter() - t_start
    result["note"] = "tiny CPU check, numbers meaningless" if tiny else "random weights from config"
    result["complete"] = True
    if not math.isfinite(result["total_s"]):
        raise RuntimeError("timer failure")
    return result


#: Calls per timed loop in ``per_layer_decode_edit_back_to_back_s``.
LOOP_CALLS = 50


def _loop(fn: Callable[[], Any], calls: int) -> Callable[[], None]:
    def f() -> None:
        for _ in range(calls):
            fn()

    return f


def _same(x: torch.Tensor) -> torch.Tensor:
    """The edit that changes nothing (``hooks_only``: what the hooks alone cost)."""
    return x


#: Issue 15's target: the edit's overhead over the unedited model, per case.
TARGET = 0.03
CASES = {
    "prefill": "prefill",
    "decode_batch32_eager": "decode",
    "decode_batch1_eager": "decode_batch1",
    "decode_cuda_graph_step": "decode_cuda_graph_step",
}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Per case, the best of ``hpr``/``hpr_graphed`` (median overhead) and whether it is at most 3%."""
    out: dict[str, Any] = {"target": TARGET}
    for case, key in CASES.items():
        over = result.get(key, {}).get("overhead", {})
        got = {n: over[n] for n in ("hpr", "hpr_graphed") if n in over}
        if got:
            best = min(got, key=lambda n: got[n])
            out[case] = {"best": best, "overhead": got[best], "met": got[best] <= TARGET}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small model, CPU ok: checks the script runs")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / ("gpu-tiny.json" if a.tiny else "gpu.json")
    from hpr import _files

    res = run(a.tiny, a.repeats, save=lambda partial: _files.write_json(out, partial))
    _files.write_json(out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
