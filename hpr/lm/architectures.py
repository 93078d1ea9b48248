"""One table from architecture to module paths, in the spirit of pyvene.

Every place that needs a model's decoder blocks or attention output projections asks this
module; nothing else in the package checks model names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from hpr.errors import ModelError


@dataclass(frozen=True)
class ArchSpec:
    """Where things live in one architecture.

    ``layers``: dotted path from the top model to the ``ModuleList`` of decoder blocks.
    ``attn_out``: dotted path inside one block to the attention output projection, whose
    *input* is the concatenation of the heads' outputs (ITI edits it per head).
    """

    layers: str
    attn_out: str


_LLAMA_LIKE = ArchSpec("model.layers", "self_attn.o_proj")

#: ``config.model_type`` -> module paths. Add a row to support a new architecture.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gemma3": ArchSpec("model.language_model.layers", "self_attn.o_proj"),
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "phi": ArchSpec("model.layers", "self_attn.dense"),
    "gpt2": ArchSpec("transformer.h", "attn.c_proj"),
    "gpt_neox": ArchSpec("gpt_neox.layers", "attention.dense"),
}


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def arch_spec(model: nn.Module) -> ArchSpec:
    """The table row of ``model`` (by ``model.config.model_type``), or a clear error."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    spec = ARCHITECTURES.get(str(model_type))
    if spec is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(
            f"unsupported architecture {model_type!r}. Supported: {known}. To add one, add a row "
            "to hpr.lm.architectures.ARCHITECTURES mapping its config.model_type to the dotted path "
            "of its decoder-block ModuleList and of the attention output projection inside a block."
        )
    return spec


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``ModuleList`` of decoder blocks of ``model``."""
    spec = arch_spec(model)
    try:
        layers = _get(model, spec.layers)
    except AttributeError as exc:
        raise ModelError(
            f"model of type {type(model).__name__} has no {spec.layers!r}; its row in "
            "hpr.lm.architectures.ARCHITECTURES does not match this class"
        ) from exc
    return layers


def attn_out_proj(model: nn.Module, layer: int) -> nn.Module:
    """The attention output projection of decoder block ``layer``."""
    spec = arch_spec(model)
    return _get(decoder_layers(model)[layer], spec.attn_out)


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    for name in ("hidden_size", "n_embd", "d_model"):
        if hasattr(cfg, name):
            return int(getattr(cfg, name))
    raise ModelError(f"cannot read the hidden size from the config of {type(model).__name__}")


def num_heads(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    for name in ("num_attention_heads", "n_head"):
        if hasattr(cfg, name):
            return int(getattr(cfg, name))
    raise ModelError(f"cannot read the number of heads from the config of {type(model).__name__}")


def fingerprint(model: nn.Module, name: str | None = None) -> dict[str, Any]:
    """What identifies a model for editors and caches: name, architecture, sizes."""
    cfg: Any = model.config
    archs = getattr(cfg, "architectures", None) or [type(model).__name__]
    return {
        "name": name or getattr(cfg, "_name_or_path", "") or type(model).__name__,
        "architecture": str(archs[0]),
        "model_type": str(cfg.model_type),
        "hidden_size": hidden_size(model),
        "num_layers": num_layers(model),
    }


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two fingerprints describe the same model (architecture and sizes; names too)."""
    keys = ("architecture", "model_type", "hidden_size", "num_layers", "name")
    return all(a.get(k) == b.get(k) for k in keys)


def weights_digest(model: nn.Module) -> str:
    """A short hash of the model's weights (per-parameter float64 sum and sum of squares), so that
    caches keyed by it are never reused for a model with the same name but other weights."""
    import hashlib

    import torch

    from hpr.lm.placement import parameter_values

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in parameter_values(model):  # offloaded parameters too (device_map)
            x = p.detach()
            stats = torch.stack([x.sum(dtype=torch.float64), x.float().pow(2).sum(dtype=torch.float64)])
            h.update(name.encode())
            h.update(stats.cpu().numpy().tobytes())
    return h.hexdigest()[:16]
