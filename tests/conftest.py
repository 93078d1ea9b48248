"""Shared fixtures: tiny random models built in the test, and the optional shared data dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from hpr.lm.tiny import byte_tokenizer, tiny_llama

# Property tests draw the same examples on every run: the suite is deterministic.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture
def tiny_model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` when it exists (tests that need it skip otherwise)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep test caches out of the user's cache, except the embedded-model cache (slow to redo)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for var in ("HPR_DATA_DIR", "HPR_DATA_SOURCE"):  # tests pass their data explicitly
        monkeypatch.delenv(var, raising=False)
    if "HPR_MODEL_CACHE" not in os.environ:  # dequantized embedded models: the user's real cache
        real = os.environ.get("HPR_CACHE_DIR") or str(Path.home() / ".cache" / "hpr")
        monkeypatch.setenv("HPR_MODEL_CACHE", str(Path(real) / "models"))
    if "HPR_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("HPR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hpr-cache"))


@pytest.fixture(autouse=True)
def _no_flush_denormal() -> Iterator[None]:
    """``study.configure`` and the train/eval CLI flush denormals process-wide (a setting of the
    notebook kernel or CLI process); tests that call them in-process must not leave it on for the
    tests after them (the kernels' tests use tiny values on purpose)."""
    yield
    import torch

    torch.set_flush_denormal(False)
