"""``hpr eval --engine lm-eval --task PATH.yaml``: any lm-eval task on an edited model, offline,
with a small local task in lm-eval's own YAML format (slow: the embedded SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpr.cli import main

pytestmark = pytest.mark.slow

DOCS = [
    {"question": "What color is the sky on a clear day?", "choices": ["Blue", "Green", "Red"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["Six", "Eight", "Ten"], "answer": 1},
    {"question": "What is the capital of France?", "choices": ["London", "Berlin", "Paris"], "answer": 2},
    {"question": "Can pigs fly?", "choices": ["No", "Yes"], "answer": 0},
    {"question": "What is frozen water called?", "choices": ["Steam", "Ice"], "answer": 1},
    {"question": "Which is a fruit?", "choices": ["Carrot", "Apple", "Potato"], "answer": 1},
]


def write_task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    docs = folder / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    yaml = folder / "tiny_local_mc.yaml"
    yaml.write_text(
        "task: tiny_local_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {docs}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return yaml


def test_any_lm_eval_task_on_smollm2_with_hpr(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from hpr.editor import HPR
    from hpr.editor_set import EditorSet
    from hpr.lm.architectures import fingerprint
    from hpr.lm.models import load_model

    try:
        model, _ = load_model("smollm2-135m-instruct")
    except Exception as exc:  # noqa: BLE001 - fetched by `make test`
        pytest.skip(f"embedded SmolLM2 not available ({exc})")
    torch.manual_seed(0)
    d = model.config.hidden_size
    EditorSet({i: HPR(d) for i in (10, 11, 12)}, fingerprint(model, "smollm2-135m-instruct")).save(tmp_path / "ed")
    task = write_task(tmp_path / "task")
    base_out, hpr_out = tmp_path / "base", tmp_path / "hpr"
    common = ["eval", "--model", "smollm2-135m-instruct", "--engine", "lm-eval", "--task", str(task)]
    assert main([*common, "--out", str(base_out)]) == 0
    assert main([*common, "--method", "hpr", "--editors", str(tmp_path / "ed"), "--out", str(hpr_out)]) == 0
    res = json.loads((hpr_out / "results.json").read_text())
    assert res["format"] == "hpr-eval/1" and res["config"]["task"] == str(task) and res["config"]["method"] == "hpr"
    assert set(res["metrics"]) >= {"acc"} and res["metrics"]["acc"]["n"] == len(DOCS)
    assert res["lm_eval"]["versions"]["tiny_local_mc"] == 1.0 and res["versions"]["lm_eval"]
    base = [json.loads(x) for x in (base_out / "predictions.jsonl").read_text().splitlines()]
    edited = [json.loads(x) for x in (hpr_out / "predictions.jsonl").read_text().splitlines()]
    assert len(base) == len(edited) == len(DOCS)
    assert any(b["responses"] != e["responses"] for b, e in zip(base, edited, strict=True))  # the edit acted
    # a task name that lm-eval does not know, and --task without the lm-eval engine, are clear errors
    assert main(["eval", "--model", "smollm2-135m-instruct", "--task", str(task)]) == 2
    assert (
        main(
            [
                "eval",
                "--model",
                "smollm2-135m-instruct",
                "--engine",
                "lm-eval",
                "--task",
                str(tmp_path / "missing.yaml"),
            ]
        )
        == 2
    )


def test_study_side_effect_task_is_cached_and_kept_out_of_the_tables(tmp_path: Path) -> None:
    """``study.get_task_results`` (notebook 7's side-effect section): an lm-eval task on the tiny
    model, written once under the run folder and read back, tagged so the paper's tables skip it."""
    pytest.importorskip("lm_eval")
    from hpr import study
    from hpr.study.tables import main_rows

    study.configure()
    task = write_task(tmp_path / "task")
    out = tmp_path / "runs"
    row = study.get_task_results("tiny-random", "base", str(task), out_dir=out, limit=4)
    assert row["method"] == "base" and row["tag"] == "lmeval" and row["metrics"]["acc"]["n"] == 4
    assert 0.0 <= row["metrics"]["acc"]["value"] <= 1.0
    results = Path(row["path"]) / "results.json"
    stamp = results.stat().st_mtime_ns
    again = study.get_task_results("tiny-random", "base", str(task), out_dir=out, limit=4)
    assert again["metrics"] == row["metrics"] and results.stat().st_mtime_ns == stamp  # reused, not re-run
    assert main_rows([row]) == [] and study.collect_results(out) and main_rows(study.collect_results(out)) == []
