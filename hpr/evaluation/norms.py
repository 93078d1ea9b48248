"""Norm divergence: how much a method changes the size of the hidden states it edits.

For test prompts, the output of each edited decoder block is captured at every (non-padding)
token twice, with and without the method, and compared per token: ``|edited| / |original|``
(L2 norms over the hidden dimension). HPR rotates, so its ratios at the edited layers are 1 up
to float error; additive edits (ITI, Diff) change the norm. Edited layers: an ``EditorSet``'s
``selected`` layers, Diff's ``layers``, ITI's ``layers`` (blocks that contain an edited head:
their block output is measured), every block for LoRA, none for Base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hpr.errors import ParameterError
from hpr.lm.architectures import num_layers
from hpr.lm.hooks import record_block_outputs
from hpr.lm.kv import pad_texts
from hpr.lm.placement import model_device


def edited_layers(method: Any, model: nn.Module) -> list[int]:
    """The decoder blocks whose output ``method`` changes first (see the module docstring)."""
    name = getattr(method, "name", None)
    if name == "base":
        return []
    if name == "lora":
        return list(range(num_layers(model)))
    for attr in ("selected", "layers"):
        if hasattr(method, attr):
            return sorted({int(i) for i in getattr(method, attr)})
    raise ParameterError(f"cannot tell which layers {type(method).__name__} edits; pass layers=[...]")


@dataclass
class NormStats:
    """Per layer, per-token norms ``(T,)`` over all non-padding tokens of the prompts."""

    original: dict[int, Tensor]
    edited: dict[int, Tensor]

    @property
    def ratios(self) -> dict[int, Tensor]:
        """``|edited| / |original|`` per token, per layer."""
        return {i: self.edited[i] / self.original[i].clamp_min(1e-30) for i in self.original}

    def summary(self) -> dict[str, Any]:
        """Median, 5th and 95th percentile of the ratio per layer and pooled over layers."""
        ratios = self.ratios
        out: dict[str, Any] = {"layers": {}}
        for i, r in ratios.items():
            out["layers"][str(i)] = _quantiles(r)
        if ratios:
            out["all"] = _quantiles(torch.cat(list(ratios.values())))
        return out


def test_prompts(records: Sequence[Any], limit: int | None = None) -> list[str]:
    """``"Q: <question>\nA: <best answer>"`` for the first ``limit`` records (the first correct
    answer when a record has no best answer)."""
    out = []
    for r in list(records)[:limit]:
        best = r.best if r.best is not None else r.correct[0]
        out.append(f"Q: {r.prompt.strip()}\nA: {r.choices[best]}")
    return out


def _quantiles(x: Tensor) -> dict[str, float]:
    q = torch.quantile(x.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {"p05": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "n": int(x.numel())}


def _capture(
    model: nn.Module, layers: Sequence[int], batches: Sequence[dict[str, Tensor]], progress: bool, desc: str
) -> dict[int, Tensor]:
    """Per-token L2 norms (float32) of the block outputs at ``layers`` over all batches."""
    norms: dict[int, list[Tensor]] = {i: [] for i in layers}
    mask: dict[str, Tensor] = {}

    def keep(layer: int, h: Tensor) -> None:
        n = h.float().norm(dim=-1)
        norms[layer].append(n[mask["m"].to(n.device).bool()].cpu())

    with record_block_outputs(model, layers, on_output=keep), torch.no_grad():
        for b in tqdm(batches, desc=desc, disable=not progress):
            mask["m"] = b["attention_mask"]
            model(**b, use_cache=False)
    return {i: torch.cat(v) for i, v in norms.items()}


def norm_divergence(
    method: Any,
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> NormStats:
    """Per-token block-output norms at the edited layers with and without ``method``.

    The capture hooks are registered inside ``method.apply`` so they run after the method's own
    hooks and see the edited output.
    """
    if not prompts:
        raise ParameterError("norm divergence needs at least one test prompt")
    lay = list(layers) if layers is not None else edited_layers(method, model)
    if not lay:
        raise ParameterError(f"method {getattr(method, 'name', method)!r} edits no layer; nothing to measure")
    device = model_device(model)
    batches = []
    for s in range(0, len(prompts), batch_size):  # right padding, whatever the tokenizer's own side
        ids, mask = pad_texts(tokenizer, list(prompts[s : s + batch_size]), device)
        batches.append({"input_ids": ids, "attention_mask": mask})
    original = _capture(model, lay, batches, progress, "norms (original)")
    with method.apply(model):
        edited = _capture(model, lay, batches, progress, "norms (edited)")
    return NormStats(original, edited)


__all__ = ["NormStats", "edited_layers", "norm_divergence", "test_prompts"]
