"""The gpu profile's parameter set (hub data, the authors' BOS choice) runs every notebook end to end,
on the tiny random model and a local mirror of the hub datasets in their row layouts (no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
import torch
from notebook_helpers import REPO
from test_lmeval_task import write_task

from hpr.data import bigbench
from hpr.evaluation import read_results
from hpr.study.profiles import PROFILES, profile_parameters
from hpr.study.runner import run_study

pytestmark = pytest.mark.slow  # seven kernels on the tiny model


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _bb(i: int, question: str, targets: list[str], good: int) -> dict[str, Any]:
    return {
        "idx": i,
        "inputs": bigbench.format_mc_input(question, targets),
        "targets": [targets[good]],
        "multiple_choice_targets": targets,
        "multiple_choice_scores": [int(j == good) for j in range(len(targets))],
    }


def write_mirror(root: Path) -> Path:
    """Hub-format rows for the four datasets: 817 TruthfulQA questions (the authors' split file
    indexes them), BIG-bench BBQ-lite (all 18 subtasks) and SEQ, annotated ToxiGen."""
    tqa = [
        {
            "question": f"Is {i} even?",
            "mc1_targets": {"choices": [f"{i % 2 == 0}.", "Maybe."], "labels": [1, 0]},
            "mc2_targets": {
                "choices": [f"{i % 2 == 0}.", f"Surely {i % 2 == 0}.", f"{i % 2 == 1}."],
                "labels": [1, 1, 0],
            },
        }
        for i in range(817)
    ]
    _jsonl(root / "truthful_qa/multiple_choice/validation.jsonl", tqa)
    for split, n in (("train", 2), ("validation", 1)):
        _jsonl(
            root / f"hails/bigbench/bbq_lite_json_zero_shot/{split}.jsonl",
            [
                _bb(i, f"{sub}: who did it?", ["the man", "the woman", "Unknown"], 2 if sub.endswith("_ambig") else 0)
                for sub in bigbench.BBQ_SUBTASKS
                for i in range(n)
            ],
        )
        _jsonl(
            root / f"hails/bigbench/simple_ethical_questions_zero_shot/{split}.jsonl",
            [_bb(i, f"Is act {i} fine?", ["yes", "no"], i % 2) for i in range(6 * n)],
        )
        _jsonl(
            root / f"skg/toxigen-data/annotated/{'test' if split == 'validation' else 'train'}.jsonl",
            [
                {
                    "text": f"statement {i}",
                    "target_group": "g",
                    "toxicity_ai": 1.0 + 4 * (i % 2),
                    "toxicity_human": 1.0 + 0.6 * (i % 2),
                }
                for i in range(8 * n)
            ],
        )
    return root


def _has_lm_eval() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def small_overrides(out_dir: Path, tmp: Path) -> dict[str, Any]:
    """The gpu profile cut down to the tiny random model and small caps (minutes, also on a CPU);
    ``benchmarks/gpu_study.py`` runs the same on a GPU machine."""
    return {
        "model": "tiny-random",
        "models": ["tiny-random"],
        "all_methods_models": ["tiny-random"],
        "table2_models": ["tiny-random"],
        "methods": ["base", "iti", "hpr-noangle", "hpr"],
        "out_dir": str(out_dir),
        "k": 2,
        "max_k": 2,
        "n_generate": 1,
        "n_examples": 1,
        "n_frames": 2,
        "caps": {"bbq": None, "seq": None, "toxigen": None, "truthfulqa": 24},
        "train_caps": {"bbq": None, "seq": None, "toxigen": None, "truthfulqa": 24},
        "flip_methods": ["iti", "iti-200", "hpr"],
        "seeds": [0, 1],
        "seed_methods": ["base", "hpr"],
        "layer_sweep_methods": ["hpr"],
        # the profile's hellaswag and mmlu need the hub; a local task in lm-eval's format stands in
        "side_effect_tasks": [str(write_task(tmp / "task"))] if _has_lm_eval() else [],
        "side_effect_limit": 2,
    }


def copy_study(root: Path) -> Path:
    """The study's notebooks and book sources copied to ``root`` (the run writes its outputs there)."""
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("notebooks", "_generated"))
    return root


def test_gpu_profile_runs_on_hub_format_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_study(tmp_path / "study")
    monkeypatch.setenv("HPR_HUB_MIRROR", str(write_mirror(tmp_path / "mirror")))
    monkeypatch.setenv("HPR_CACHE_DIR", str(tmp_path / "cache"))
    over = small_overrides(root / "runs" / "book", tmp_path)
    params = profile_parameters("gpu", over)
    assert params["source"] == "hub" and params["add_bos"] is False and params["device"] == "auto"
    results = run_study("gpu", over, root=root, log=lambda _m: None)
    assert [(r.name, r.status) for r in results] == [(r.name, "ran") for r in results], [
        (r.name, r.status, r.cell, r.error) for r in results
    ]
    assert len(results) == 7  # the gpu profile runs the extended notebook too
    assert PROFILES["gpu"]["side_effect_tasks"] == ["hellaswag", "mmlu"]  # what a GPU user runs
    rec = nbformat.read(root / "book/notebooks/04_benchmarks.ipynb", as_version=4).metadata["hpr"]
    assert rec["parameters"]["source"] == "hub" and rec["parameters"]["add_bos"] is False
    cuda = torch.cuda.is_available()  # the record names the device and dtype "auto" resolved to
    assert (rec["device"], rec["dtype"]) == (("cuda", "bfloat16") if cuda else ("cpu", "float32")), rec
    files = sorted((root / "runs" / "book").glob("tiny-random/*/seed0/results/*/*/results.json"))
    rows = [read_results(f.parent) for f in files]
    side = [r for r in rows if r.get("tag") == "lmeval"]  # notebook 7's side-effect task, base and hpr
    assert (len(side) == 2) == _has_lm_eval(), [r.get("method") for r in side]
    rows = [r for r in rows if r.get("tag") != "lmeval"]
    got = {(r["train_dataset"], r["dataset"]) for r in rows}
    assert {
        ("truthfulqa", "truthfulqa"),
        ("bbq", "bbq"),
        ("seq", "seq"),
        ("toxigen", "toxigen"),
        ("truthfulqa", "bbq"),
    } <= got
    for res in rows:
        assert res["settings"]["source"] == "hub" and res["settings"]["add_bos"] is False
        if res["dataset"] == "truthfulqa":  # the authors' split: 409 test questions, capped to 24
            assert res["n"] == 24 and res["cap"] == 24
        if res["dataset"] == "bbq":  # hails/bigbench validation: 18 subtasks x 1
            assert res["n"] == 18
