"""The GPU benchmark and the host-cost benchmark run end to end on the CPU (tiny shapes), so that a
broken script is found here and not in the one short run a GPU machine allows."""

from __future__ import annotations

import copy
import importlib.util
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
