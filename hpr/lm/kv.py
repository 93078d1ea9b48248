"""KV-cache and batching helpers shared by scoring (``hpr.evaluation.scoring``) and capture
(``hpr.lm.capture``): the cache argument of this transformers version, caches built from saved
keys and values, common token prefixes, padding, and packed passes (several segments per row, each
seeing only its own context, through a block attention mask)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hpr.errors import ModelError

KV = list[tuple[Tensor, Tensor]]


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model takes (``max_position_embeddings``), or None if unknown."""
    cfg: Any = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return int(n) if n else None


@dataclass
class TokenCount:
    """Tokens that went through the model (``input_ids`` elements, padding included), and calls."""

    tokens: int = 0
    calls: int = 0


@contextmanager
def count_tokens(model: nn.Module) -> Iterator[TokenCount]:
    """Count the ``input_ids`` elements of every forward call of ``model`` inside the block."""
    count = TokenCount()

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, Tensor):
            count.tokens += int(ids.numel())
            count.calls += 1

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()


def sliding_window(model: nn.Module) -> int | None:
    cfg: Any = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    types = getattr(text, "layer_types", None) or []
    win = getattr(text, "sliding_window", None)
    if win and (any("sliding" in str(t) for t in types) or not types):
        return int(win)
    return None


#: Names of the KV-cache argument of a causal LM's ``forward``: transformers renamed
#: ``past_key_values`` (up to 5.17 at least) to ``cache`` (5.24). A model given the other name puts
#: it in ``**kwargs`` and ignores it, so the cache must be passed under the name it takes.
CACHE_ARGS = ("cache", "past_key_values")


def cache_arg(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes a KV cache: ``cache`` (transformers 5.24) or
    ``past_key_values`` (5.17); ``ModelError`` if it takes neither."""
    for fn in (model.forward, type(model).forward):  # accelerate's hooks keep ``__wrapped__``
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        name = next((n for n in CACHE_ARGS if n in params), None)
        if name is not None:
            return name
    raise ModelError(
        f"{type(model).__name__}.forward takes no KV cache (neither `cache` nor "
        "`past_key_values`); score it with score_full (no prefix sharing)"
    )


def new_cache(model: nn.Module, kv: KV | None, batch: int) -> Any:
    from transformers import DynamicCache

    config: Any = model.config
    if kv is None:
        return DynamicCache(config=config)
    data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
    return DynamicCache(data, config=config)


def cache_entries(cache: Any, row: int | None = None, length: int | None = None) -> KV:
    out = []
    for i, layer in enumerate(cache.layers):
        k, v = layer.keys, layer.values
        if k is None or v is None:
            import transformers

            raise ModelError(
                f"the model left layer {i} of the KV cache it was given empty (transformers "
                f"{transformers.__version__}); the scorer is tested with transformers 5.17 and "
                "5.24 (pinned: 5.24.0): install transformers==5.24.0, or use score_full"
            )
        if row is not None:
            k, v = k[row : row + 1], v[row : row + 1]
        if length is not None:
            k, v = k[:, :, :length], v[:, :, :length]
        out.append((k, v))
    return out


def pad_rows(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def pad_texts(tokenizer: Any, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``, each ``(B, T)``, without touching
    the tokenizer's padding side."""
    ids = [list(tokenizer(t)["input_ids"]) for t in texts]
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return input_ids.to(device), mask.to(device)


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``seqs``, at most ``min(len) - 1`` (each keeps one)."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return max(n, 0)


def packed_inputs(
    rows: Sequence[Sequence[tuple[int, ...]]], context_lens: Sequence[int], kv_len: int, pad: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Input ids ``(B, S)``, position ids ``(B, S)`` and a boolean attention mask ``(B, 1, S, kv_len + S)``
    for one packed continuation pass.

    Row ``b`` holds its question's segments back to back. A token of a segment sees the first
    ``context_lens[b]`` cache positions (shared prefix and its own context; the rest of the cache is
    the context pass's padding) and the earlier tokens of its own segment, at positions that continue
    the context, so each segment is scored as if it followed the context alone. Padding tokens see
    the context and themselves (every row of the mask attends somewhere, so no NaN can arise).
    """
    width = max([sum(len(s) for s in r) for r in rows] + [1])
    n = len(rows)
    ids = torch.full((n, width), pad, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, 1, width, kv_len + width), dtype=torch.bool)
    for b, (segs, ctx) in enumerate(zip(rows, context_lens, strict=True)):
        mask[b, 0, :, :ctx] = True
        o = 0
        for seg in segs:
            m = len(seg)
            ids[b, o : o + m] = torch.tensor(seg, dtype=torch.long)
            pos[b, o : o + m] = ctx + torch.arange(m)
            mask[b, 0, o : o + m, kv_len + o : kv_len + o + m] = torch.ones(m, m, dtype=torch.bool).tril()
            o += m
        rest = torch.arange(o, width)
        mask[b, 0, rest, kv_len + rest] = True
        pos[b, o:] = ctx
    return ids, pos, mask


__all__ = [
    "CACHE_ARGS",
    "KV",
    "TokenCount",
    "cache_arg",
    "cache_entries",
    "common_prefix",
    "count_tokens",
    "max_positions",
    "new_cache",
    "packed_inputs",
    "pad_rows",
    "pad_texts",
    "sliding_window",
]
