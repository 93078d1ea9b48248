"""The forward passes of activation capture (``hpr.lm.capture``): a question's prompt once and its
answers packed on its KV cache (one question, or a group of questions in one padded pass), or whole
sequences as one right-padded batch. Each pass leaves the hooked block outputs in ``grabbed`` and
returns, per sequence, the answer tokens' outputs ``(L, a, d)``."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hpr.errors import DataError
from hpr.lm.kv import (
    cache_arg,
    cache_entries,
    new_cache,
    packed_inputs,
)
from hpr.lm.placement import model_device


@dataclass
class Seq:
    question: int
    label: int
    prompt: list[int]
    answer: list[int]


def fit_lengths(seqs: list[Seq], limit: int | None) -> None:
    """Cut prompts from the left, in place, so every sequence fits ``limit`` positions (the same cut
    for every answer of a question, so they keep sharing their prompt); warn with the count."""
    if limit is None:
        return
    over: dict[int, int] = {}
    for sq in seqs:
        if len(sq.answer) >= limit:
            raise DataError(
                f"an answer of {len(sq.answer)} tokens does not fit the model's {limit} "
                "positions; shorten or drop that example"
            )
        extra = len(sq.prompt) + len(sq.answer) - limit
        if extra > 0:
            over[sq.question] = max(over.get(sq.question, 0), extra)
    if not over:
        return
    for sq in seqs:
        if sq.question in over:
            sq.prompt = sq.prompt[over[sq.question] :]
    n = sum(1 for sq in seqs if sq.question in over)
    msg = (
        f"{len(over)} question(s) ({n} of {len(seqs)} sequences) were longer than the model's {limit} "
        "positions; their prompts were truncated from the left (the first tokens dropped)"
    )
    warnings.warn(msg, stacklevel=3)
    logging.getLogger(__name__).warning(msg)


def stack_layers(grabbed: dict[int, Tensor]) -> Tensor:
    """The recorded outputs of each layer, in layer order, stacked ``(L, ...)`` on the first one's
    device (a ``device_map`` may put the blocks on several devices)."""
    outs = [grabbed[i] for i in sorted(grabbed)]
    return torch.stack([h.to(outs[0].device) for h in outs])


def run_shared_prompt(
    model: nn.Module, seqs: list[Seq], idx: list[int], pad: int, grabbed: dict[int, Tensor], extra: dict[str, Any]
) -> list[Tensor]:
    """Run one question: its prompt once, then all its answers as one batch on the prompt's cache.

    Returns, per sequence in ``idx``, the answer-token outputs ``(L, a, d)``.
    """
    device = model_device(model)
    prompt = torch.tensor([seqs[idx[0]].prompt], device=device)
    name = cache_arg(model)  # the KV-cache argument and output field of this transformers version
    out = model(input_ids=prompt, use_cache=True, **extra)
    cache = getattr(out, name)
    n, p = len(idx), prompt.shape[1]
    if n > 1:
        cache.batch_repeat_interleave(n)
    width = max(len(seqs[s].answer) for s in idx)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, p + width), dtype=torch.long)
    mask[:, :p] = 1
    for r, s in enumerate(idx):
        a = seqs[s].answer
        ids[r, : len(a)] = torch.tensor(a)
        mask[r, p : p + len(a)] = 1
    pos = (p + torch.arange(width)).expand(n, -1)
    grabbed.clear()
    model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        use_cache=True,
        **{name: cache},
        **extra,
    )
    h = stack_layers(grabbed)  # (L, n, width, d)
    return [h[:, r, : len(seqs[s].answer)] for r, s in enumerate(idx)]


def prefix_cache(model: nn.Module, prefix: list[int], extra: dict[str, Any]) -> Any:
    """The KV cache (``hpr.evaluation.scoring``'s list of per-layer keys and values) of ``prefix``, or None."""
    if not prefix:
        return None
    cache = new_cache(model, None, 1)
    ids = torch.tensor([prefix], dtype=torch.long, device=model_device(model))
    model(input_ids=ids, use_cache=True, **{cache_arg(model): cache}, **extra)
    return cache_entries(cache)


def run_packed(
    model: nn.Module,
    seqs: list[Seq],
    group: list[list[int]],
    pad: int,
    grabbed: dict[int, Tensor],
    extra: dict[str, Any],
    n_prefix: int = 0,
    prefix_kv: Any = None,
) -> list[Tensor]:
    """Run a group of questions (``group[b]``: the sequence indices of question ``b``, which share
    one prompt): the prompts after their common first ``n_prefix`` tokens (whose KV cache is
    ``prefix_kv``) as one right-padded batch, then every answer in one packed pass on that cache.
    Returns, per sequence of the group in order, the answer-token outputs ``(L, a, d)``."""
    device = model_device(model)
    name = cache_arg(model)
    tails = [seqs[g[0]].prompt[n_prefix:] for g in group]
    width = max(len(p) for p in tails)
    ids = torch.full((len(group), width), pad, dtype=torch.long)
    for b, p in enumerate(tails):
        ids[b, : len(p)] = torch.tensor(p)
    cache = new_cache(model, prefix_kv, len(group))
    model(input_ids=ids.to(device), use_cache=True, **{name: cache}, **extra)  # right padding: causal, no mask
    rows = [[tuple(seqs[s].answer) for s in g] for g in group]
    a_ids, pos, mask = packed_inputs(rows, [n_prefix + len(p) for p in tails], n_prefix + width, pad)
    grabbed.clear()
    model(
        input_ids=a_ids.to(device),
        position_ids=pos.to(device),
        attention_mask=mask.to(device),
        use_cache=True,
        **{name: cache},
        **extra,
    )
    h = stack_layers(grabbed)  # (L, B, S, d)
    res = []
    for b, g in enumerate(group):
        o = 0
        for s in g:
            a = len(seqs[s].answer)
            res.append(h[:, b, o : o + a])
            o += a
    return res


def question_groups(
    by_q: dict[int, list[int]], seqs: list[Seq], batch_size: int, max_tokens: int
) -> list[list[list[int]]]:
    """Questions (their sequence lists) grouped for ``run_packed``: sorted by prompt length, at most
    ``batch_size`` per group and, beyond the first, at most ``max_tokens`` padded tokens per pass."""
    qs = sorted(by_q.values(), key=lambda g: (len(seqs[g[0]].prompt), sum(len(seqs[s].answer) for s in g)))
    out: list[list[list[int]]] = []
    cur: list[list[int]] = []
    wp = wa = 0
    for g in qs:
        p, a = len(seqs[g[0]].prompt), sum(len(seqs[s].answer) for s in g)
        np_, na = max(wp, p), max(wa, a)
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * max(np_, na) > max_tokens):
            out.append(cur)
            cur, np_, na = [], p, a
        cur.append(g)
        wp, wa = np_, na
    if cur:
        out.append(cur)
    return out


def run_full(
    model: nn.Module, seqs: list[Seq], idx: list[int], pad: int, grabbed: dict[int, Tensor], extra: dict[str, Any]
) -> list[Tensor]:
    """Run whole sequences as one right-padded batch; per sequence the answer outputs ``(L, a, d)``."""
    device = model_device(model)
    full = [seqs[s].prompt + seqs[s].answer for s in idx]
    width = max(len(t) for t in full)
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, toks in enumerate(full):
        ids[r, : len(toks)] = torch.tensor(toks)
        mask[r, : len(toks)] = 1
    grabbed.clear()
    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **extra)
    h = stack_layers(grabbed)
    out = []
    for r, s in enumerate(idx):
        end, a = len(full[r]), len(seqs[s].answer)
        out.append(h[:, r, end - a : end])
    return out


__all__ = [
    "Seq",
    "fit_lengths",
    "prefix_cache",
    "question_groups",
    "run_full",
    "run_packed",
    "run_shared_prompt",
    "stack_layers",
]
