"""The GPU benchmark and the host-cost benchmark run end to end on the CPU (tiny shapes), so that a
broken script is found here and not in the one short run a GPU machine allows."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _script(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:  # the scripts import their siblings (common, reference)
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def _threads_restored():  # noqa: ANN202
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.usefixtures("_threads_restored")
def test_gpu_benchmark_tiny_saves_after_each_section() -> None:
    gpu, table = _script("gpu"), _script("gpu_table")
    partials: list[dict[str, Any]] = []
    res = gpu.run(tiny=True, repeats=1, save=lambda p: partials.append(copy.deepcopy(p)))
    assert res["complete"] is True
    assert len(partials) >= 4 and all(p["complete"] is False for p in partials)
    assert "prefill" in partials[0] and "decode" not in partials[0]
    assert [p["elapsed_s"] for p in partials] == sorted(p["elapsed_s"] for p in partials)
    for p in partials:  # each save holds what the final result holds, nothing else
        assert all(p[k] == res[k] for k in p if k not in ("complete", "elapsed_s"))
    back = res["per_layer_decode_edit_back_to_back_s"]
    assert set(back) == {"copy", "hpr", "hpr_graphed"} and all(v > 0 for v in back.values())
    assert set(res["targets"]) == {"target", *gpu.CASES} - {"decode_cuda_graph_step"}  # no CUDA here
    assert res["hpr_vs_reference_edited_tokens"] > 0
    assert "Incomplete run, stopped after" in table.render(partials[0])
    assert "Incomplete run" not in table.render(res)


@pytest.mark.usefixtures("_threads_restored")
def test_host_cost_benchmark() -> None:
    res = _script("host_cost").run(k=2, layers=6)
    assert res["hook_us"] > 0 and set(res["apply_enter_exit_us"]) == {"apply", "hooks_only"}
    ops = res["edit_dispatched_ops_decode_32x1x4096"]
    assert len(ops) == 4
    for counts in ops.values():
        # the edit stays a few dozen operations (each a kernel launch at decode on a GPU)
        assert 20 <= counts["non_view_ops"] <= 32 and counts["ops"] > counts["non_view_ops"]


def test_static_decode_step_rewrites_one_slot() -> None:
    """The CUDA-graph decode row replays one step many times: each call must write the same cache
    slot (a cache that advanced would overflow its ``seq + 1`` slots after one call) and give the
    logits a dynamic-cache decode of the same tokens gives."""
    gpu = _script("gpu")
    device = torch.device("cpu")
    model = gpu.build(True, device, torch.float32)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    seq, batch = 12, 3
    step = gpu.static_decode_step(model, batch, seq, device, torch.Generator().manual_seed(5), cache_kw)
    with torch.no_grad():
        runs = [step() for _ in range(4)]
    assert all(torch.equal(r, runs[0]) for r in runs[1:])
    g = torch.Generator().manual_seed(5)  # the same draws as the step: prompt, then next token
    prompt = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    nxt = torch.randint(0, model.config.vocab_size, (batch, 1), generator=g)
    with torch.no_grad():
        want = model(torch.cat([prompt, nxt], dim=1), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(runs[0], want, rtol=1e-4, atol=1e-4)
