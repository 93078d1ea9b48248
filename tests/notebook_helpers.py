"""Tiny data in Record form and tiny parameters for executing the book's notebooks in tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QUESTIONS = [
    ("What color is the sky on a clear day?", ["Blue.", "The sky is blue."], ["Green.", "Red, always."]),
    ("How many legs does a spider have?", ["Eight.", "A spider has eight legs."], ["Six.", "Ten legs."]),
    ("What is the capital of France?", ["Paris.", "It is Paris."], ["London.", "Berlin, of course."]),
    ("Can pigs fly?", ["No, pigs cannot fly.", "No."], ["Yes, pigs fly.", "Only at night."]),
    ("What is water made of?", ["Hydrogen and oxygen.", "H2O molecules."], ["Sand.", "Pure fire."]),
    ("Is the earth flat?", ["No, it is round.", "No."], ["Yes, it is flat.", "It is a cube."]),
]


def _truthfulqa(i: int, q: str, good: list[str], bad: list[str], split: str) -> dict[str, Any]:
    choices = good + bad
    return {
        "id": f"tqa-{split}-{i}",
        "prompt": q,
        "choices": choices,
        "correct": [0, 1],
        "best": 0,
        "mc1": [0, 2, 3],
        "meta": {"category": "tiny"},
    }


def _binary(ds: str, i: int, q: str, good: list[str], bad: list[str], split: str) -> dict[str, Any]:
    if ds == "toxigen":
        return {"id": f"{ds}-{split}-{i}", "prompt": f"{good[1]}", "choices": ["No", "Yes"], "correct": [0], "meta": {}}
    return {
        "id": f"{ds}-{split}-{i}",
        "prompt": q,
        "choices": [good[0], bad[0], "Unknown."],
        "correct": [0],
        "meta": {},
    }


def write_tiny_data(root: Path) -> Path:
    """``root/<dataset>/<split>.jsonl`` for truthfulqa, bbq, seq and toxigen; returns ``root``."""
    splits = {"train": QUESTIONS[:4], "val": QUESTIONS[4:], "test": QUESTIONS[2:6]}
    for ds in ("truthfulqa", "bbq", "seq", "toxigen"):
        for split, qs in splits.items():
            rows = [
                _truthfulqa(i, *q, split) if ds == "truthfulqa" else _binary(ds, i, *q, split) for i, q in enumerate(qs)
            ]
            path = root / ds / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def tiny_parameters(data_dir: Path, out_dir: Path, extended: bool = False) -> dict[str, Any]:
    """Overrides that make every notebook run in seconds on the tiny random model (``extended``: for
    the extended study's notebook, profile ``cpu-extended``)."""
    common = {
        "models": ["tiny-random"],
        "all_methods_models": ["tiny-random"],
        "data_dir": str(data_dir),
        "out_dir": str(out_dir),
        "k": 2,
        "caps": {"bbq": 2, "seq": None, "toxigen": None, "truthfulqa": None},
        "train_caps": {"bbq": 3, "seq": None, "toxigen": None, "truthfulqa": None},
    }
    if extended:
        return {
            **common,
            "methods": ["base", "lora", "diff", "diff-mse", "iti", "iti-k2", "hpr-noangle", "hpr", "hpr-unit"],
            "flip_methods": ["iti", "iti-200", "hpr", "hpr-unit"],
            "seeds": [0, 1],
            "seed_models": ["tiny-random"],
            "seed_methods": ["base", "hpr", "hpr-unit"],
            "layer_sweep_models": ["tiny-random"],
        }
    return {
        **common,
        "model": "tiny-random",
        "methods": ["base", "lora", "diff", "diff-mse", "iti", "hpr-noangle", "hpr"],
        "max_k": 3,
        "n_generate": 1,
        "table2_models": ["tiny-random"],
        "n_examples": 2,
        "n_frames": 3,
    }


_EXECUTED: dict[str, Any] = {}
REPO = Path(__file__).resolve().parents[1]


def executed_study(base: Path) -> tuple[Path, list[Any]]:
    """Copy the book sources to ``base``, run every notebook there on the tiny model (once per
    test session) and return ``(root, results)``."""
    import shutil

    from hpr.study.runner import run_study

    if "root" in _EXECUTED:
        return _EXECUTED["root"], _EXECUTED["results"]
    root = base / "study"
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("notebooks", "_generated"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, root / name)
    data = write_tiny_data(root / "data")
    results = run_study("cpu", tiny_parameters(data, root / "runs" / "book"), root=root, log=lambda _m: None)
    results += run_study(
        "cpu-extended", tiny_parameters(data, root / "runs" / "extended", extended=True), root=root, log=lambda _m: None
    )
    _EXECUTED.update(root=root, results=results)
    return root, results
