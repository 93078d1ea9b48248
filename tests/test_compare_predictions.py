"""``benchmarks/compare_predictions.py``: question-by-question comparison of two predictions files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_predictions.py"


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(*args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_same_and_different_predictions(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.jsonl",
        [
            {"id": "q0", "chosen": 1, "mc2": 0.50, "logliks": [-1.0, -2.0]},
            {"id": "q1", "chosen": 0, "mc2": 0.25, "logliks": [-3.0, -4.0]},
        ],
    )
    b = write(
        tmp_path / "b.jsonl",
        [  # other order, one choice flipped
            {"id": "q1", "chosen": 1, "mc2": 0.75, "logliks": [-3.0, -3.5]},
            {"id": "q0", "chosen": 1, "mc2": 0.50, "logliks": [-1.0, -2.0]},
        ],
    )
    proc = run(a, b)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {
        "questions": 2,
        "only_in_a": 0,
        "only_in_b": 0,
        "same_choice": 1,
        "max_mc2_diff": 0.5,
        "max_loglik_diff": 0.5,
    }


def test_missing_question_and_bad_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [{"id": "q0", "chosen": 0}, {"id": "q1", "chosen": 0}])
    b = write(tmp_path / "b.jsonl", [{"id": "q0", "chosen": 0}])
    proc = run(a, b)
    assert proc.returncode == 1 and json.loads(proc.stdout)["only_in_a"] == 1
    proc = run(a, tmp_path / "missing.jsonl")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    proc = run(a, bad)
    assert proc.returncode != 0 and "bad.jsonl:1" in proc.stderr


def test_runs_pair_old_and_new_result_layouts(tmp_path: Path) -> None:
    """``--runs``: ``x.jsonl`` (the old results layout) pairs with ``x/predictions.jsonl``."""
    rows = [{"id": "q0", "chosen": 1, "mc2": 0.5, "logliks": [-1.0, -2.0]}]
    old = tmp_path / "old" / "m" / "truthfulqa" / "seed0" / "results" / "truthfulqa"
    new = tmp_path / "new" / "m" / "truthfulqa" / "seed0" / "results" / "truthfulqa" / "hpr-k5-x"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    write(old / "hpr-k5-x.jsonl", rows)
    write(new / "predictions.jsonl", rows)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", str(tmp_path / "old"), str(tmp_path / "new")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1/1 same choice" in proc.stdout and '"files": 1' in proc.stdout
    write(old / "base-x.jsonl", rows)  # a file only one side has
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", str(tmp_path / "old"), str(tmp_path / "new")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "base-x" in proc.stdout
