"""Log-likelihood scoring of multiple-choice requests, with a shared-prefix KV cache.

A request is a context and its continuations (the choices, each with its leading space). The
log-likelihood of a continuation is the sum of the per-token log-probabilities (natural log)
of its tokens given the context, exactly as lm-evaluation-harness computes it:

- tokenization follows lm-eval's ``HFLM``: trailing spaces of the context move to the
  continuation; the context is encoded alone, ``context + continuation`` is encoded whole, and
  the continuation tokens are the whole encoding after the context's length (``encode_pair``);
  the tokenizer adds its special tokens (BOS) unless the text starts with the BOS text.
  ``add_bos`` changes that: ``None`` keeps the tokenizer's default (what lm-eval 0.4.13 does),
  ``False`` adds no special tokens (the paper's authors scored without BOS), ``True`` makes the
  ids start with exactly one BOS (prepended when the tokenizer adds none).
- the model sees ``(context + continuation)[:-1]``; the last context position predicts the
  first continuation token.

``score`` runs the token prefix shared by every context (TruthfulQA's six-example primer) once,
keeps its KV cache, runs each context's remaining tokens on top of it (questions batched,
right-padded), then every choice of a question in one batch on top of that question's cache.
Every token passes through the model once, so editing hooks (``hpr.lm.hooks``) edit the
prefix and the continuations exactly as a full pass would. ``score_full`` is the plain
reference: one full sequence per choice.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from hpr.errors import DataError, ParameterError
from hpr.lm.kv import (
    KV,
    cache_arg,
    cache_entries,
    common_prefix,
    max_positions,
    new_cache,
    packed_inputs,
    pad_rows,
    sliding_window,
)
from hpr.lm.placement import model_device


@dataclass(frozen=True)
class Request:
    """One multiple-choice question: ``context`` and ``continuations`` (leading space included)."""

    id: str
    context: str
    continuations: tuple[str, ...]


@dataclass(frozen=True)
class Encoded:
    """Token ids of a request: the context and each continuation (lm-eval's split)."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]


def _prefix_id(tokenizer: Any) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_token_id", None)


def ensure_bos(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """``ids`` with the tokenizer's BOS id in front unless already there; ``ParameterError`` if the
    tokenizer has no BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ParameterError("add_bos=True but the tokenizer has no BOS token; use add_bos=None or False")
    ids = list(ids)
    return ids if ids[:1] == [bos] else [int(bos), *ids]


def tok_encode(tokenizer: Any, text: str, add_bos: bool | None = None) -> list[int]:
    """Encode like lm-eval's ``HFLM.tok_encode`` with ``add_bos_token=add_bos``.

    ``None``: the tokenizer's special tokens; ``False``: none; ``True``: special tokens, then a
    BOS in front if they hold none (``ensure_bos``). Text that starts with the BOS text gets no
    added special tokens (as lm-eval).
    """
    pid = _prefix_id(tokenizer)
    kwargs: dict[str, Any] = {} if add_bos is None else {"add_special_tokens": add_bos}
    if pid is not None and text.startswith(tokenizer.decode(pid)):
        kwargs["add_special_tokens"] = False
    ids = list(tokenizer.encode(text, **kwargs))
    return ensure_bos(tokenizer, ids) if add_bos else ids


def encode_pair(
    tokenizer: Any, context: str, continuation: str, add_bos: bool | None = None
) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split as lm-eval's causal ``_encode_pair`` does."""
    if not context:
        raise DataError("a request has an empty context; every prompt needs some text")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation, add_bos)
    ctx = tok_encode(tokenizer, context, add_bos)
    return ctx, whole[len(ctx) :]


def encode_request(tokenizer: Any, request: Request, add_bos: bool | None = None) -> Encoded:
    """Token ids of ``request`` (``add_bos`` as in ``tok_encode``); ``DataError`` for a continuation
    with no tokens."""
    if not request.continuations:
        raise DataError(f"request {request.id!r} has no choices")
    ctx: list[int] | None = None
    conts = []
    for c in request.continuations:
        cx, ct = encode_pair(tokenizer, request.context, c, add_bos)
        if not ct:
            raise DataError(f"choice {c!r} of {request.id!r} has no tokens; remove empty choices")
        ctx = cx
        conts.append(tuple(ct))
    assert ctx is not None
    return Encoded(tuple(ctx), tuple(conts))


def fit_lengths(encs: Sequence[Encoded], limit: int | None, what: str = "requests") -> list[Encoded]:
    """``encs`` with contexts cut from the left so that context + longest continuation fit in
    ``limit`` tokens (as lm-eval does); warns with the number of truncated ones, ``DataError`` if a
    continuation alone does not fit."""
    if limit is None:
        return list(encs)
    out, cut = [], 0
    for e in encs:
        longest = max(len(c) for c in e.continuations)
        if longest >= limit:
            raise DataError(
                f"a choice of {longest} tokens does not fit the model's {limit} positions; shorten or drop that example"
            )
        if len(e.context) + longest > limit:
            out.append(Encoded(e.context[len(e.context) + longest - limit :], e.continuations))
            cut += 1
        else:
            out.append(e)
    if cut:
        msg = (
            f"{cut} of {len(encs)} {what} were longer than the model's {limit} positions; their "
            "prompts were truncated from the left (the first tokens dropped)"
        )
        warnings.warn(msg, stacklevel=3)
        logging.getLogger(__name__).warning(msg)
    return out


def _method_ctx(method: Any, model: nn.Module) -> Any:
    return nullcontext() if method is None else method.apply(model)


def _segments(enc: Encoded) -> list[tuple[int, ...]]:
    """The continuation-pass inputs of ``enc``: each continuation longer than one token, minus its
    last token (the first token is predicted by the context pass)."""
    return [c[:-1] for c in enc.continuations if len(c) > 1]


def _chunks(encs: Sequence[Encoded], n_prefix: int, batch_size: int, max_tokens: int) -> list[list[int]]:
    """Question indices grouped for one context pass and one packed continuation pass each.

    Questions are sorted by their packed continuation length (then context length) so that rows of a
    pass have similar widths; a pass holds at most ``batch_size`` questions and, beyond its first
    question, at most ``max_tokens`` padded tokens per pass.
    """
    width = [sum(len(s) for s in _segments(e)) for e in encs]
    tail = [len(e.context) - n_prefix for e in encs]
    order = sorted(range(len(encs)), key=lambda i: (width[i], tail[i]))
    out: list[list[int]] = []
    cur: list[int] = []
    w = t = 0
    for i in order:
        nw, nt = max(w, width[i]), max(t, tail[i])
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * max(nw, nt) > max_tokens):
            out.append(cur)
            cur, nw, nt = [], width[i], tail[i]
        cur.append(i)
        w, t = nw, nt
    if cur:
        out.append(cur)
    return out


def _row_logprobs(logits: Tensor, row: int, cols: slice | int, targets: Sequence[int]) -> list[float]:
    """``log_softmax(logits[row, cols])`` at ``targets`` (float32, summed later in float64): one
    fused log-softmax over a contiguous slice of positions, no copy of the full logits."""
    x = logits[row, cols].float()
    t = torch.tensor(targets, dtype=torch.long, device=logits.device)
    if x.dim() == 1:
        return F.log_softmax(x, dim=-1)[t].double().tolist()
    return F.log_softmax(x, dim=-1).gather(-1, t[:, None]).squeeze(-1).double().tolist()


@torch.no_grad()
def score(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[Request],
    *,
    method: Any = None,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
    add_bos: bool | None = None,
) -> list[list[float]]:
    """Per-request, per-continuation log-likelihoods (nats, summed over continuation tokens).

    ``method``: anything with an ``apply(model)`` context manager (``None`` = the model as is);
    the whole scoring, shared prefix included, runs inside it. ``batch_size``: questions per pass;
    ``max_tokens``: padded tokens per pass (default: as many as keep a pass's float32 logits
    within 2 GiB, at most 1024: on two CPU cores larger passes were slower, not faster). ``add_bos``: see ``tok_encode``.

    Each pass runs a batch of questions' contexts (right-padded) on the shared prefix's KV cache,
    then all their continuations at once, packed per question into one row with an attention mask
    that lets each continuation see only its context and itself (``packed_inputs``).
    """
    if batch_size < 1:
        raise ParameterError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ParameterError(f"max_tokens must be at least 1, got {max_tokens}")
    encs = fit_lengths([encode_request(tokenizer, r, add_bos) for r in requests], max_positions(model))
    if not encs:
        return []
    longest = max(len(e.context) + max(len(c) for c in e.continuations) for e in encs)
    window = sliding_window(model)
    if window is not None and longest >= window:
        # A sliding-window cache drops old keys; fall back to full sequences (still exact). Below the
        # window, packing is exact too: every key a token sees lies within ``longest`` positions of it.
        return score_full(model, tokenizer, requests, method=method, progress=progress, add_bos=add_bos)
    if max_tokens is None:
        head: Any = getattr(model, "get_output_embeddings", lambda: None)()
        vocab = int(getattr(head, "out_features", 0) or 1)
        max_tokens = max(256, min(1024, (2 << 30) // (4 * vocab)))
    device = model_device(model)
    arg = cache_arg(model)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    n_prefix = common_prefix([e.context for e in encs])
    out: list[list[float]] = [[] for _ in encs]
    with _method_ctx(method, model):
        prefix_kv: KV | None = None
        if n_prefix:
            ids = torch.tensor([encs[0].context[:n_prefix]], dtype=torch.long, device=device)
            cache = new_cache(model, None, 1)
            model(input_ids=ids, **{arg: cache}, use_cache=True, logits_to_keep=1)
            prefix_kv = cache_entries(cache)
        bar = tqdm(total=len(encs), desc="scoring", unit="q", disable=not progress)
        for chunk in _chunks(encs, n_prefix, batch_size, max_tokens):
            tails = [encs[i].context[n_prefix:] for i in chunk]
            # Logits only at each row's last position: a 1-D ``logits_to_keep`` (the distinct last
            # positions, kept for every row) means the same in transformers 5.17 and 5.24. It stays
            # on the CPU, which indexes hidden states on any device (with ``device_map`` the last
            # block and the LM head may sit on another device than the embeddings).
            keep = sorted({len(t) - 1 for t in tails})
            cache = new_cache(model, prefix_kv, len(chunk))
            res = model(
                input_ids=pad_rows(tails, pad, device),
                **{arg: cache},
                use_cache=True,
                logits_to_keep=torch.tensor(keep, dtype=torch.long),
            )
            col = [keep.index(len(t) - 1) for t in tails]
            segs = [_segments(encs[i]) for i in chunk]
            totals = [
                _row_logprobs(res.logits, b, col[b], [c[0] for c in encs[i].continuations]) for b, i in enumerate(chunk)
            ]
            if any(segs):
                kv_len = n_prefix + max(len(t) for t in tails)
                ids, pos, mask = packed_inputs(segs, [n_prefix + len(t) for t in tails], kv_len, pad)
                res = model(
                    input_ids=ids.to(device),
                    position_ids=pos.to(device),
                    attention_mask=mask.to(device),
                    **{arg: cache},
                    use_cache=True,
                )
                for b, i in enumerate(chunk):
                    conts = encs[i].continuations
                    tgts = [t for c in conts for t in c[1:]]
                    if not tgts:
                        continue
                    lps = iter(_row_logprobs(res.logits, b, slice(0, len(tgts)), tgts))
                    for j, c in enumerate(conts):
                        totals[b][j] += sum(next(lps) for _ in c[1:])
            for b, i in enumerate(chunk):
                out[i] = [float(x) for x in totals[b]]
            bar.update(len(chunk))
        bar.close()
    return out


@torch.no_grad()
def score_full(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[Request],
    *,
    method: Any = None,
    progress: bool = False,
    add_bos: bool | None = None,
) -> list[list[float]]:
    """Reference scorer: every continuation as its own full sequence, no cache, batch size 1."""
    device = model_device(model)
    out = []
    with _method_ctx(method, model):
        encs = fit_lengths([encode_request(tokenizer, r, add_bos) for r in requests], max_positions(model))
        for enc in tqdm(encs, desc="scoring (full)", unit="q", disable=not progress):
            row = []
            for cont in enc.continuations:
                seq = list(enc.context) + list(cont)
                ids = torch.tensor([seq[:-1]], dtype=torch.long, device=device)
                lp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
                tgt = torch.tensor(cont, dtype=torch.long, device=lp.device)
                row.append(float(lp[-len(cont) :].gather(-1, tgt[:, None]).double().sum()))
            out.append(row)
    return out


__all__ = [
    "Encoded",
    "Request",
    "encode_pair",
    "encode_request",
    "ensure_bos",
    "fit_lengths",
    "score",
    "score_full",
    "tok_encode",
]
