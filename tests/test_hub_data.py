"""Hub mode (the paper's data) on rows in the hub formats, with no network: the one function that
calls ``datasets.load_dataset`` is replaced by ``datasets.Dataset.from_list`` of rows written here."""

from __future__ import annotations

import json
from typing import Any

import datasets
import pytest

from hpr.data import bigbench, hub, prompts
from hpr.data import datasets as data
from hpr.errors import DataError, ParameterError
from hpr.evaluation import tasks


def _bb_row(i: int, question: str, targets: list[str], good: int) -> dict[str, Any]:
    return {
        "idx": i,
        "inputs": bigbench.format_mc_input(question, targets),
        "targets": [targets[good]],
        "multiple_choice_targets": targets,
        "multiple_choice_scores": [int(j == good) for j in range(len(targets))],
    }


def _tqa_rows(n: int = 817) -> list[dict[str, Any]]:
    return [
        {
            "question": f"Q{i}?",
            "mc1_targets": {"choices": [f"best{i}", f"w{i}"], "labels": [1, 0]},
            "mc2_targets": {"choices": [f"best{i}", f"t{i}", f"f{i}"], "labels": [1, 1, 0]},
        }
        for i in range(n)
    ]


def _hub(tables: dict[tuple[str, str, str], list[dict[str, Any]]]) -> Any:
    calls: list[tuple[str, str, str]] = []

    def load(path: str, config: str, split: str) -> list[dict[str, Any]]:
        calls.append((path, config, split))
        return [dict(r) for r in datasets.Dataset.from_list(tables[(path, config, split)])]

    load.calls = calls  # type: ignore[attr-defined]
    return load


def test_truthfulqa_paper_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "_hub_rows", _hub({("truthful_qa", "multiple_choice", "validation"): _tqa_rows()}))
    split = json.loads(hub.PAPER_SPLITS.read_text())
    got = data.load_splits("truthfulqa", source="hub")  # 'paper' is the hub default
    assert {k: len(v) for k, v in got.items()} == {"train": 367, "val": 41, "test": 409}
    assert [r.id for r in got["test"]] == [f"truthfulqa-{i}" for i in sorted(split["test"])]
    assert [r.id for r in got["val"]] == [f"truthfulqa-{i}" for i in sorted(split["eval"])]
    r = got["test"][0]
    assert [r.choices[i] for i in r.mc1] == [r.choices[r.best], r.choices[-1]] and r.choices[-1].startswith("w")
    assert r.mc2 == (0, 1, 2)  # MC1's wrong answer is not in MC2
    seeded = data.load_splits("truthfulqa", source="hub", scheme="seeded")
    assert [len(v) for v in seeded.values()] == [327, 82, 408]
    with pytest.raises(ParameterError, match="unknown split scheme 'nope'"):
        data.load_split("truthfulqa", "test", source="hub", scheme="nope")


def test_truthfulqa_split_file_must_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "_hub_rows", _hub({("truthful_qa", "multiple_choice", "validation"): _tqa_rows(5)}))
    with pytest.raises(DataError, match="does not index 5 disjoint rows"):
        data.load_split("truthfulqa", "test", source="hub")
    assert len(data.load_split("truthfulqa", "test", source="hub", scheme="seeded")) == 2  # 2/1/2


def test_bbq_and_seq_from_hails_bigbench(monkeypatch: pytest.MonkeyPatch) -> None:
    # BBQ-lite lists its 18 subtasks one after the other, idx restarting at 0 in each
    def bbq(split: str, n: int) -> list[dict[str, Any]]:
        return [
            _bb_row(i, f"{split} {sub} {i}. Who?", ["x ", "y", "Unknown"], 2 if sub.endswith("_ambig") else 0)
            for sub in bigbench.BBQ_SUBTASKS
            for i in range(n)
        ]

    seq_train = [_bb_row(i, f"S{i}? ", ["no", "yes", "I prefer not to say"], 1) for i in range(20)]
    seq_val = [_bb_row(i, f"V{i}?", ["no", "yes", "I prefer not to say"], 0) for i in range(16)]
    tables = {
        ("hails/bigbench", "bbq_lite_json_zero_shot", "train"): bbq("train", 5),
        ("hails/bigbench", "bbq_lite_json_zero_shot", "validation"): bbq("validation", 2),
        ("hails/bigbench", "simple_ethical_questions_zero_shot", "train"): seq_train,
        ("hails/bigbench", "simple_ethical_questions_zero_shot", "validation"): seq_val,
    }
    load = _hub(tables)
    monkeypatch.setattr(hub, "_hub_rows", load)
    got = data.load_splits("seq", source="hub", seed=1)
    assert [len(got[k]) for k in data.SPLITS] == [16, 4, 16]
    assert {r.prompt for r in got["test"]} == {f"V{i}?" for i in range(16)}
    assert not {r.prompt for r in got["train"]} & {r.prompt for r in got["val"]}
    for r in got["train"]:
        assert tasks.context("seq", r) == r.meta["inputs"]  # verbatim, not formatted again
        assert r.prompt.endswith("? ") and r.choices == ("no", "yes", "I prefer not to say") and r.correct == (1,)
    assert ("hails/bigbench", "simple_ethical_questions_zero_shot", "validation") in load.calls
    bbq_splits = data.load_splits("bbq", source="hub")
    assert len(bbq_splits["test"]) == 36 and len(bbq_splits["train"]) + len(bbq_splits["val"]) == 90
    test = bbq_splits["test"]
    assert [r.meta["subtask"] for r in test[:4]] == ["age_ambig"] * 2 + ["age_disambig"] * 2
    assert test[-1].meta["category"] == "sexual_orientation" and test[-1].meta["ambiguity"] == "disambig"
    assert all(r.meta["subtask"] in r.prompt for r in test)  # the inferred subtask is the row's own
    assert data.strata("bbq", test) == {s: 2 for s in bigbench.BBQ_SUBTASKS}


def test_toxigen_annotated(monkeypatch: pytest.MonkeyPatch) -> None:
    def rows(n: int) -> list[dict[str, Any]]:
        return [
            {
                "text": f"s{i} ",
                "target_group": "g",
                "toxicity_ai": 1.0 + 4 * (i % 2),
                "toxicity_human": 1.0 + 0.6 * (i % 2),
            }
            for i in range(n)
        ]

    monkeypatch.setattr(
        hub,
        "_hub_rows",
        _hub(
            {("skg/toxigen-data", "annotated", "train"): rows(10), ("skg/toxigen-data", "annotated", "test"): rows(6)}
        ),
    )
    got = data.load_splits("toxigen", source="hub")
    assert [len(got[k]) for k in data.SPLITS] == [8, 2, 6]
    r = got["test"][1]  # 5.0 + 1.6 = 6.6 > 5.5: hateful, as lm-eval labels it
    assert r.correct == (1,) and r.meta["text"] == "s1" and r.prompt == prompts.TOXIGEN_PROMPT.format(text="s1")
    assert got["test"][0].correct == (0,)  # 2.0 <= 5.5
    assert tasks.context("toxigen", r) == r.prompt


def test_paper_scheme_needs_hub(tmp_path: Any) -> None:
    with pytest.raises(ParameterError, match="scheme 'paper' needs the paper's data"):
        p = tmp_path / "toxigen" / "prompts"
        p.mkdir(parents=True)
        (p / "hate_a_1k.txt").write_text("- h\\n- i\\n-\n")
        (p / "neutral_a_1k.txt").write_text("- n\\n-\n")
        data.load_split("toxigen", "test", data_dir=tmp_path, scheme="paper")


def test_hub_unreachable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="source 'hub' needs the Hugging Face hub"):
        data.load_split("bbq", "test", source="hub")
