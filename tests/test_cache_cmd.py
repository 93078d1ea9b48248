"""``hpr cache``: lists activation caches with model, dataset, split and size; removes all or one model's."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_capture import RECORDS  # noqa: I001

from hpr.cli import main
from hpr.lm.activations import cached_captures
from hpr.lm.capture import capture


def test_list_and_clear_by_model(
    tiny_model, tokenizer, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpr._files import cache_dir

    monkeypatch.setenv("HPR_CACHE_DIR", str(tmp_path / "cache"))  # this test's caches only
    root = cache_dir() / "activations"
    capture(tiny_model, tokenizer, RECORDS, dataset="truthfulqa", split="train", name="model-a", progress=False)
    capture(tiny_model, tokenizer, RECORDS, dataset="truthfulqa", split="val", name="model-b", progress=False)
    found = cached_captures(root)
    assert sorted(c.model for c in found) == ["model-a", "model-b"]
    assert {(c.dataset, c.split) for c in found} == {("truthfulqa", "train"), ("truthfulqa", "val")}
    assert all(c.size > 0 and c.layers == tiny_model.config.num_hidden_layers and c.tokens > 0 for c in found)
    (root / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "model-a" in out and "model-b" in out and "3 file(s)" in out and "?" in out  # the damaged one is listed
    assert main(["cache", "--clear", "--model", "model-a"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert sorted(c.model for c in cached_captures(root)) == ["?", "model-b"]
    assert main(["cache", "--clear"]) == 0 and not list(Path(root).glob("*.safetensors"))
    assert main(["cache"]) == 0 and "no cached activations" in capsys.readouterr().out
