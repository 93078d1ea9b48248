"""Property-based tests: arbitrary or mutated input to the data loaders and the editor
config loader gives a valid result or our ``HPRError`` subclass, never another exception."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpr.data import datasets as data
from hpr.data import sources, toxigen
from hpr.editor import HPR
from hpr.editor_set import EditorSet, read_config
from hpr.errors import DataError, EditorError

SETTINGS = settings(
    max_examples=int(os.environ.get("HPR_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_leaf = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _mutate(obj: Any, path: list[Any], value: Any) -> Any:
    """``obj`` with the element at ``path`` (indices/keys, followed as far as they exist) replaced."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(obj, dict) and obj:
        k = list(obj)[key % len(obj)] if isinstance(key, int) else key
        return {**obj, k: _mutate(obj.get(k), rest, value)}
    if isinstance(obj, list) and obj:
        i = key % len(obj) if isinstance(key, int) else 0
        return [*obj[:i], _mutate(obj[i], rest, value), *obj[i + 1 :]]
    return value


mutation = st.tuples(st.lists(st.integers(0, 7), min_size=0, max_size=4), json_value)


def _check(parsed: sources.Parsed) -> None:
    for it in parsed.items:
        assert it.choices and it.correct
        assert all(0 <= c < len(it.choices) for c in it.correct)
        assert len(it.correct) < len(it.choices)


def _expect(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except DataError:
        return None


def _in_tmp(name: str, content: bytes, fn: Callable[[Path], Any]) -> Any:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        return fn(p)


QUESTIONS = {
    "examples": [
        {
            "Question": "Is the sky blue?",
            "Category": "Misc",
            "True answers": ["Yes", "Often"],
            "False answers": ["No"],
            "Best answer": "Yes",
        },
        {
            "Question": "Do fish fly?",
            "Category": "Misc",
            "True answers": ["Mostly not"],
            "False answers": ["Yes", "Always"],
            "Best answer": "Mostly not",
        },
    ]
}
TASK = {
    "name": "t",
    "examples": [
        {"input": "Who is it?", "target_scores": {"A": 1, "B": 0, "C": 0}, "comment": {"category": "x"}},
        {"input": "Which one?", "target_scores": {"yes": 0, "no": 1}},
    ],
}
MC_TASK = [
    {"question": "Q1?", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "c": 1, "b": 0}},
    {"question": "Q2?", "mc1_targets": {"x": 1, "y": 0, "z": 0}, "mc2_targets": {"x": 1, "y": 0}},
]
CSV = (
    "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
    "Adversarial,Misc,Why?,Because,Because; So,No reason,src\n"
    "Adversarial,Misc,How?,Like this,Like this,Not so; Never,src\n"
)
TOXIGEN = "- a neutral statement\\n- another one\\n- third one\n"

JSON_FORMATS: dict[str, tuple[Any, Callable[[Path], sources.Parsed]]] = {
    "questions.json": (QUESTIONS, sources.parse_truthfulqa_questions),
    "task.json": (TASK, sources.parse_bigbench_task),
    "mc_task.json": (MC_TASK, sources.parse_mc_task),
}


def test_fuzz_seeds_are_valid() -> None:
    """The unmutated seeds parse into items (so mutations start from real files)."""
    for name, (obj, parse) in JSON_FORMATS.items():
        got = _in_tmp(name, json.dumps(obj).encode(), parse)
        assert len(got.items) == 2, name
    assert len(_in_tmp("TruthfulQA.csv", CSV.encode(), sources.parse_truthfulqa_csv).items) == 2
    assert len(_in_tmp("p/neutral_x_1k.txt", TOXIGEN.encode(), lambda p: toxigen.parse_toxigen(p.parent)).items) == 3


@SETTINGS
@given(fmt=st.sampled_from(sorted(JSON_FORMATS)), mut=mutation)
def test_fuzz_json_formats_mutated(fmt: str, mut: tuple[list[int], Any]) -> None:
    seed, parse = JSON_FORMATS[fmt]
    obj = _mutate(seed, *mut)
    got = _expect(lambda: _in_tmp(fmt, json.dumps(obj).encode(), parse))
    if got is not None:
        _check(got)


@SETTINGS
@given(fmt=st.sampled_from(sorted(JSON_FORMATS)), obj=json_value)
def test_fuzz_json_formats_arbitrary(fmt: str, obj: Any) -> None:
    got = _expect(lambda: _in_tmp(fmt, json.dumps(obj).encode(), JSON_FORMATS[fmt][1]))
    if got is not None:
        _check(got)


@SETTINGS
@given(
    fmt=st.sampled_from([*sorted(JSON_FORMATS), "TruthfulQA.csv"]), cut=st.integers(0, 400), junk=st.binary(max_size=12)
)
def test_fuzz_truncated_or_damaged_bytes(fmt: str, cut: int, junk: bytes) -> None:
    raw = CSV.encode() if fmt.endswith(".csv") else json.dumps(JSON_FORMATS[fmt][0]).encode()
    content = raw[: cut % (len(raw) + 1)] + junk

    def load(p: Path) -> Any:
        return data.load_dataset("truthfulqa" if fmt != "task.json" else "seq", source="local", data_dir=p)

    _expect(lambda: _in_tmp(fmt, content, load))


@SETTINGS
@given(
    rows=st.lists(st.lists(st.text(max_size=10), max_size=8), max_size=5), header=st.sampled_from(["full", "partial"])
)
def test_fuzz_truthfulqa_csv(rows: list[list[str]], header: str) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers"]
        if header == "full"
        else ["Type", "Question"]
    )
    w.writerows(rows)
    got = _expect(lambda: _in_tmp("TruthfulQA.csv", buf.getvalue().encode(), sources.parse_truthfulqa_csv))
    if got is not None:
        _check(got)


@SETTINGS
@given(
    text=st.text(max_size=200) | st.just(TOXIGEN),
    raw=st.binary(max_size=40),
    name=st.sampled_from(["hate_x_1k.txt", "neutral_y_1k.txt", "hate__1k.txt", "other_1k.txt"]),
    as_bytes=st.booleans(),
)
def test_fuzz_toxigen_prompts(text: str, raw: bytes, name: str, as_bytes: bool) -> None:
    content = raw if as_bytes else text.encode("utf-8", "surrogatepass")

    def load(p: Path) -> Any:
        return data.load_dataset("toxigen", data_dir=p.parent.parent.parent)

    ds = _expect(lambda: _in_tmp(f"toxigen/prompts/{name}", content, load))
    if ds is not None:
        assert all(r.choices == ("No", "Yes") and len(r.correct) == 1 for r in ds.records)


# ---------------------------------------------------------------- editor config
def _saved_editors(d: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    fp = {"name": "m", "architecture": "LlamaForCausalLM", "model_type": "llama", "hidden_size": 8, "num_layers": 3}
    EditorSet({0: HPR(8, 2), 2: HPR(8, 1)}, fp, [2, 0], {"val_accuracy": {"0": 0.5, "2": 0.7}}).save(d)
    return dict(json.loads((d / "config.json").read_text()))


@SETTINGS
@given(mut=mutation)
def test_fuzz_editor_config_mutated(mut: tuple[list[int], Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = _mutate(_saved_editors(d), *mut)
        (d / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        try:
            es = EditorSet.load(d)
        except EditorError:
            return
        assert es.selected and all(i in es.editors for i in es.selected)
        assert all(e.hidden_size == es.hidden_size for e in es.editors.values())


@SETTINGS
@given(obj=json_value, raw=st.binary(max_size=30), as_bytes=st.booleans())
def test_fuzz_editor_config_arbitrary(obj: Any, raw: bytes, as_bytes: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "config.json").write_bytes(raw if as_bytes else json.dumps(obj).encode())
        try:
            read_config(d)
        except EditorError:
            pass
