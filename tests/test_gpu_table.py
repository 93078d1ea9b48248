"""The README's GPU table is the rendering of the committed ``benchmarks/results/gpu.json``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _table_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "benchmarks" / "gpu_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_is_rendered_from_the_results_file() -> None:
    mod = _table_module()
    res = json.loads((ROOT / "benchmarks/results/gpu.json").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert mod.replace_between_markers(readme, mod.render(res)) == readme, (
        "README.md's GPU table is not the rendering of benchmarks/results/gpu.json: "
        "run python benchmarks/gpu_table.py --write"
    )
    assert res["device"] in readme


def _section(plain: float, **over: float) -> dict:
    return {"median_s": {"plain": plain}, "overhead": over}


def test_render_new_rows_and_targets() -> None:
    mod = _table_module()
    res = {
        "device": "NVIDIA H200",
        "dtype": "torch.bfloat16",
        "k": 5,
        "torch": "2.11",
        "transformers": "5.24.0",
        "prefill": {"shape": [8, 512], **_section(0.1, hpr=0.012, hpr_graphed=0.013)},
        "decode": {"batch": 32, **_section(0.02, hooks_only=0.006, hpr=0.2, hpr_graphed=0.022)},
        "decode_batch1": {"batch": 1, **_section(0.02, hpr=0.2, hpr_graphed=0.061)},
        "decode_cuda_graph_step": _section(0.04, hpr=0.009),
    }
    res["targets"] = {
        "target": 0.03,
        "prefill": {"best": "hpr", "overhead": 0.012, "met": True},
        "decode_batch1_eager": {"best": "hpr_graphed", "overhead": 0.061, "met": False},
    }
    out = mod.render(res)
    lines = out.splitlines()
    assert lines[2] == "| | unedited | hooks that do nothing | HPR (library path) | HPR, `graphed=True` |"
    assert "| prefill 8 x 512, eager | 100.0 ms |  | +1.2% | +1.3% |" in lines
    assert "| decode, batch 1, eager (host-bound) | 20.0 ms |  | +20.0% | +6.1% |" in lines
    assert "| decode, batch 32, whole step in a CUDA graph | 40.0 ms |  | +0.9% |  |" in lines
    assert not any("kernel time" in ln for ln in lines)  # a section the file lacks is no row
    assert lines[-1].startswith("Target at most +3% in every case: not met")
    with pytest.raises(SystemExit, match="markers"):
        mod.replace_between_markers("no markers here", out)
