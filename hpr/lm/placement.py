"""Where a model's tensors are: the keywords that place it at load time, the device its inputs go to,
the device a module computes on, and the values of parameters that accelerate offloaded.

A ``device_map`` spreads a model over devices. Entries ``"cpu"`` beside a GPU, and ``"disk"``
entries, are *offloaded*: their parameters sit on the meta device (no data), and accelerate's hooks
(``module._hf_hook``) bring the real weights to the module's execution device at each forward.
Code that asks ``next(model.parameters()).device`` would then get ``meta``; these helpers ask the
hooks instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hpr.errors import ModelError, ParameterError


def placement_kwargs(device_map: str | dict[str, Any] | None, offload_folder: str | Path | None) -> dict[str, Any]:
    """The ``from_pretrained`` keywords that place a model with ``device_map`` (``{}`` without one),
    checked before any weight is read: accelerate installed, ``offload_folder`` a folder or new."""
    if device_map is None:
        if offload_folder is not None:
            raise ParameterError("offload_folder is only used with a device_map; pass device_map='auto' or a dict")
        return {}
    if importlib.util.find_spec("accelerate") is None:
        raise ParameterError(
            f"device_map={device_map!r} needs the accelerate package; "
            "`pip install accelerate`, or pass a single device instead"
        )
    if offload_folder is None:
        return {"device_map": device_map}
    if Path(offload_folder).exists() and not Path(offload_folder).is_dir():
        raise ParameterError(
            f"offload_folder {str(offload_folder)!r} is a file; pass a folder (it is created if missing)"
        )
    return {"device_map": device_map, "offload_folder": str(offload_folder)}


def _hooks(module: nn.Module) -> list[Any]:
    """The accelerate hooks attached to ``module`` (a ``SequentialHook`` holds several)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def execution_device(module: nn.Module) -> torch.device | None:
    """The device ``module`` computes on: its first parameter's device, or for an offloaded module
    (parameters on meta) the execution device of its accelerate hook; None if neither tells."""
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
        break
    for hook in _hooks(module):
        dev = getattr(hook, "execution_device", None)
        if dev is not None:
            return torch.device(dev)
    return None


def model_device(model: nn.Module) -> torch.device:
    """The device a model's inputs go to: where its input embeddings compute (its first parameter's
    device for a model without ``get_input_embeddings``); CPU for a model without parameters."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    for module in (emb, model):
        if isinstance(module, nn.Module):
            dev = execution_device(module)
            if dev is not None:
                return dev
    return torch.device("cpu")


def parameter_values(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``model.named_parameters()``, each offloaded parameter (on meta) replaced by the weights its
    accelerate hook keeps for it (on the CPU, or read from disk); ``ModelError`` if none are kept."""
    kept: dict[str, tuple[Any, str]] = {}
    for prefix, module in model.named_modules():
        for hook in _hooks(module):
            weights = getattr(hook, "weights_map", None)
            if weights is None:
                continue
            for local, p in module.named_parameters(recurse=bool(getattr(hook, "place_submodules", False))):
                if p.device.type == "meta":
                    kept.setdefault(f"{prefix}.{local}" if prefix else local, (weights, local))
    for name, p in model.named_parameters():
        if p.device.type != "meta":
            yield name, p
        elif name in kept:
            weights, local = kept[name]
            yield name, torch.as_tensor(weights[local])
        else:
            raise ModelError(
                f"parameter {name} is on the meta device and no accelerate hook holds its weights; "
                "load the model with its weights (no device_map, or a device_map that offloads with accelerate)"
            )


__all__ = ["execution_device", "model_device", "parameter_values", "placement_kwargs"]
