"""Determinism on CPU: the same train and eval commands with the same seed give the same results
files, and another seed gives other editors and predictions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hpr.cli import main

# editors_sha256 hashes config.json, which holds the wall times
VOLATILE = {"train_seconds", "total_seconds", "timings", "created", "git", "editors", "path", "editors_sha256"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strip(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    from tests.conftest import byte_tokenizer, tiny_llama

    ckpt = tmp_path / "ckpt"
    tiny_llama(layers=3, hidden=32).save_pretrained(ckpt)
    byte_tokenizer().save_pretrained(ckpt)
    q = tmp_path / "data" / "bigbench" / "truthful_qa" / "questions.json"
    q.parent.mkdir(parents=True)
    q.write_text(
        json.dumps(
            {
                "examples": [
                    {
                        "Question": f"Is {i} a prime?",
                        "True answers": ["maybe", f"{i} is"],
                        "False answers": ["never", "no"],
                        "Best answer": "maybe",
                    }
                    for i in range(24)
                ]
            }
        )
    )
    return ckpt, q.parents[2]


def _pipeline(ckpt: Path, data_dir: Path, run: Path, monkeypatch: pytest.MonkeyPatch, seed: int = 3) -> None:
    monkeypatch.setenv("HPR_CACHE_DIR", str(run / "cache"))  # nothing shared between the runs
    common = ["--model", str(ckpt), "--dataset", "truthfulqa", "--data-dir", str(data_dir), "--seed", str(seed)]
    assert (
        main(["train", *common, "--out", str(run / "editors"), "--k", "2", "--epochs", "2", "--prompt-format", "qa"])
        == 0
    )
    assert (
        main(["eval", *common, "--method", "hpr", "--editors", str(run / "editors"), "--out", str(run / "eval")]) == 0
    )


def test_same_command_same_seed_same_results(
    setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, data_dir = setup
    a, b = tmp_path / "a", tmp_path / "b"
    _pipeline(ckpt, data_dir, a, monkeypatch)
    _pipeline(ckpt, data_dir, b, monkeypatch)
    # editors: byte-identical weights, same config apart from wall times
    assert (a / "editors" / "model.safetensors").read_bytes() == (b / "editors" / "model.safetensors").read_bytes()
    cfg = [_strip(json.loads((r / "editors" / "config.json").read_text())) for r in (a, b)]
    assert cfg[0] == cfg[1]
    # evaluation: identical predictions file, same metrics and config apart from paths and times
    assert (a / "eval" / "predictions.jsonl").read_bytes() == (b / "eval" / "predictions.jsonl").read_bytes()
    res = [json.loads((r / "eval" / "results.json").read_text()) for r in (a, b)]
    assert res[0]["metrics"] == res[1]["metrics"]
    assert _strip(res[0]["config"]) == _strip(res[1]["config"])
    # The same method with another seed (split and training) gives other editors and predictions:
    # the equalities above would also hold if the seed were ignored, this would not.
    c = tmp_path / "c"
    _pipeline(ckpt, data_dir, c, monkeypatch, seed=4)
    for name in ("editors/model.safetensors", "eval/predictions.jsonl"):
        assert _sha256(c / name) != _sha256(a / name), f"seed 4 wrote seed 3's {name}"
