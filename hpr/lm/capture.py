"""Capture decoder-block outputs at the answer tokens of (prompt, answer) sequences.

Every choice of every record becomes one sequence (``hpr.data.prompts``): the T true and F false
answers of a question are T + F sequences, each run through the model once. By default the
prompts of a group of questions run once, as one right-padded batch with a KV cache, and then all
their answers run in one pass on that cache, each question's answers packed into one row with a
block attention mask (``hpr.lm.kv.packed_inputs``: an answer sees its own prompt and its own
earlier tokens, at the positions that follow its prompt); ``share_prompt=False`` runs whole
sequences in padded batches. Pairs are formed afterwards from the captured activations.

The activations it returns (``Captured``) and their on-disk layout are described in
``hpr.lm.activations``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hpr import _files
from hpr._files import slug
from hpr.data.prompts import DEFAULT_FORMAT, encode, format_record, has_chat_template
from hpr.data.records import Record
from hpr.errors import DataError, ParameterError
from hpr.lm.activations import _ROW_FIELDS, SHARED_THRESHOLD, Captured, data_hash
from hpr.lm.architectures import decoder_layers, hidden_size, weights_digest
from hpr.lm.architectures import fingerprint as model_fingerprint
from hpr.lm.hooks import record_block_outputs
from hpr.lm.kv import (
    cache_arg,
    cache_entries,
    common_prefix,
    max_positions,
    new_cache,
    packed_inputs,
    sliding_window,
)

#: Bump when the capture procedure changes, to invalidate old caches (2: packed answer passes).
CAPTURE_VERSION = 2


def _store_dtype(model: nn.Module) -> torch.dtype:
    dtype = next(model.parameters()).dtype
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    out = sorted({int(i) for i in layers})
    bad = [i for i in out if not 0 <= i < n]
    if bad or not out:
        raise ParameterError(f"layers {bad or '[]'} are not valid for a model with {n} blocks (0..{n - 1})")
    return out


def capture_key(
    model: nn.Module,
    records: Sequence[Record],
    *,
    layers: Sequence[int],
    dataset: str,
    split: str,
    prompt_format: str,
    seed: int,
    chat: bool,
    name: str | None = None,
) -> str:
    """The cache key of a capture (see the module docstring)."""
    return _files.stable_hash(
        {
            "v": CAPTURE_VERSION,
            "model": model_fingerprint(model, name),
            "weights": weights_digest(model),
            "dtype": str(next(model.parameters()).dtype),
            "dataset": dataset,
            "split": split,
            "format": prompt_format,
            "seed": seed,
            "chat": chat,
            "layers": list(layers),
            "data": data_hash(records),
        }
    )


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


@dataclass
class _Seq:
    question: int
    label: int
    prompt: list[int]
    answer: list[int]


def _fit_lengths(seqs: list[_Seq], limit: int | None) -> None:
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


def _run_shared_prompt(
    model: nn.Module, seqs: list[_Seq], idx: list[int], pad: int, grabbed: dict[int, Tensor], extra: dict[str, Any]
) -> list[Tensor]:
    """Run one question: its prompt once, then all its answers as one batch on the prompt's cache.

    Returns, per sequence in ``idx``, the answer-token outputs ``(L, a, d)``.
    """
    device = next(model.parameters()).device
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
    h = torch.stack([grabbed[i] for i in sorted(grabbed)])  # (L, n, width, d)
    return [h[:, r, : len(seqs[s].answer)] for r, s in enumerate(idx)]


def _prefix_cache(model: nn.Module, prefix: list[int], extra: dict[str, Any]) -> Any:
    """The KV cache (``hpr.evaluation.scoring``'s list of per-layer keys and values) of ``prefix``, or None."""
    if not prefix:
        return None
    cache = new_cache(model, None, 1)
    ids = torch.tensor([prefix], dtype=torch.long, device=next(model.parameters()).device)
    model(input_ids=ids, use_cache=True, **{cache_arg(model): cache}, **extra)
    return cache_entries(cache)


def _run_packed(
    model: nn.Module,
    seqs: list[_Seq],
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
    device = next(model.parameters()).device
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
    h = torch.stack([grabbed[i] for i in sorted(grabbed)])  # (L, B, S, d)
    res = []
    for b, g in enumerate(group):
        o = 0
        for s in g:
            a = len(seqs[s].answer)
            res.append(h[:, b, o : o + a])
            o += a
    return res


def _question_groups(
    by_q: dict[int, list[int]], seqs: list[_Seq], batch_size: int, max_tokens: int
) -> list[list[list[int]]]:
    """Questions (their sequence lists) grouped for ``_run_packed``: sorted by prompt length, at most
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


def _run_full(
    model: nn.Module, seqs: list[_Seq], idx: list[int], pad: int, grabbed: dict[int, Tensor], extra: dict[str, Any]
) -> list[Tensor]:
    """Run whole sequences as one right-padded batch; per sequence the answer outputs ``(L, a, d)``."""
    device = next(model.parameters()).device
    full = [seqs[s].prompt + seqs[s].answer for s in idx]
    width = max(len(t) for t in full)
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, toks in enumerate(full):
        ids[r, : len(toks)] = torch.tensor(toks)
        mask[r, : len(toks)] = 1
    grabbed.clear()
    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **extra)
    h = torch.stack([grabbed[i] for i in sorted(grabbed)])
    out = []
    for r, s in enumerate(idx):
        end, a = len(full[r]), len(seqs[s].answer)
        out.append(h[:, r, end - a : end])
    return out


@torch.inference_mode()
def run_capture(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    layers: Sequence[int] | None = None,
    prompt_format: str = DEFAULT_FORMAT,
    seed: int = 0,
    chat: bool | None = None,
    batch_size: int = 16,
    share_prompt: bool = True,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    max_tokens: int = 2048,
) -> Captured:
    """Run every (prompt, answer) sequence of ``records`` once and keep the answer-token outputs.

    ``share_prompt`` (default): each prompt runs once and the T + F answers of its question run on
    its KV cache (groups of up to ``batch_size`` questions and about ``max_tokens`` padded tokens
    per pass, answers packed per question, see the module docstring; one question at a time when
    a sliding-window model's packed rows would not fit its window); the causal model gives the
    answer tokens the same activations as whole sequences (up to float rounding), at a fraction of
    the cost (prompts with lettered choices are ~20x longer than answers). Otherwise, or when a
    format gives the answers of one question different prompts, whole sequences run in
    right-padded batches of ``batch_size``.
    """
    if not records:
        raise DataError("no records to capture; check the dataset split")
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
    lay = _resolve_layers(model, layers)
    seqs: list[_Seq] = []
    for qi, rec in enumerate(records):
        if not rec.correct or len(rec.correct) == len(rec.choices):
            raise DataError(f"record {rec.id!r} needs at least one correct and one incorrect choice")
        for _choice, ok, prompt, answer in format_record(rec, prompt_format, seed):
            enc = encode(tokenizer, prompt, answer, chat)
            seqs.append(_Seq(qi, int(ok), list(enc.prompt_ids), list(enc.answer_ids)))
    _fit_lengths(seqs, max_positions(model))
    alens = [len(s.answer) for s in seqs]
    offsets = [0, *torch.cumsum(torch.tensor(alens), 0).tolist()]
    data = torch.empty(len(lay), offsets[-1], hidden_size(model), dtype=_store_dtype(model))
    groups: list[list[int]] = []
    by_q: dict[int, list[int]] = {}
    for s, sq in enumerate(seqs):
        by_q.setdefault(sq.question, []).append(s)
    shared = share_prompt and all(len({tuple(seqs[s].prompt) for s in g}) == 1 for g in by_q.values())
    longest = max(len(s.prompt) + len(s.answer) for s in seqs)
    window = sliding_window(model)
    packed = shared and (
        window is None or longest + max(sum(len(seqs[s].answer) for s in g) for g in by_q.values()) < window
    )
    qgroups: list[list[list[int]]] = []
    n_prefix, prefix_kv = 0, None
    if packed:
        qgroups = _question_groups(by_q, seqs, batch_size, max_tokens)
        # Prompts often share their first tokens (a chat template's system turn, an instruction):
        # those run once, and every group continues from their KV cache.
        n_prefix = common_prefix([seqs[g[0]].prompt for g in by_q.values()]) if len(by_q) > 1 else 0
    elif shared:
        groups = list(by_q.values())
    else:
        order = sorted(range(len(seqs)), key=lambda s: -(len(seqs[s].prompt) + alens[s]))
        groups = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    extra = _forward_kwargs(model)
    run = _run_shared_prompt if shared else _run_full
    with record_block_outputs(model, lay) as grabbed:  # layer -> its output at the latest forward
        if packed:
            prefix_kv = _prefix_cache(model, seqs[0].prompt[:n_prefix], extra) if n_prefix else None
            grabbed.clear()
            for qg in tqdm(qgroups, desc="capture", unit="batch", disable=not progress):
                flat = [s for g in qg for s in g]
                outs = _run_packed(model, seqs, qg, pad, grabbed, extra, n_prefix, prefix_kv)
                for s, h in zip(flat, outs, strict=True):
                    data[:, offsets[s] : offsets[s + 1]] = h.to("cpu", data.dtype)
        for idx in (
            [] if packed else tqdm(groups, desc="capture", unit="question" if shared else "batch", disable=not progress)
        ):
            for s, h in zip(idx, run(model, seqs, idx, pad, grabbed, extra), strict=True):
                data[:, offsets[s] : offsets[s + 1]] = h.to("cpu", data.dtype)
    rows: dict[str, list[int]] = {k: [] for k in _ROW_FIELDS}
    for s, sq in enumerate(seqs):
        a = alens[s]
        rows["label"] += [sq.label] * a
        rows["question"] += [sq.question] * a
        rows["sequence"] += [s] * a
        rows["position"] += list(range(a))
        rows["token"] += sq.answer
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in rows.items()}
    m = dict(meta or {})
    m.setdefault("model", model_fingerprint(model, getattr(model, "hpr_name", None)))
    m.setdefault("prompt_format", prompt_format)
    m.update(
        {
            "num_sequences": len(seqs),
            "num_questions": len(records),
            "shared_prompt": shared,
            "record_ids": [r.id for r in records],
        }
    )
    return Captured(data, lay, t["label"], t["question"], t["sequence"], t["position"], t["token"], m)


def capture(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    dataset: str = "custom",
    split: str = "train",
    layers: Sequence[int] | None = None,
    prompt_format: str = DEFAULT_FORMAT,
    seed: int = 0,
    chat: bool | None = None,
    batch_size: int = 16,
    cache: bool = True,
    cache_root: str | Path | None = None,
    progress: bool = True,
    name: str | None = None,
    share_prompt: bool = True,
) -> Captured:
    """Capture (or load from the cache) the answer-token activations of ``records``.

    ``name``: the model's name for its fingerprint (defaults to ``model.hpr_name``).
    The cache file lives under ``cache_root`` (default ``hpr._files.cache_dir()/activations``).
    """
    lay = _resolve_layers(model, layers)
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    name = name or getattr(model, "hpr_name", None)
    key = capture_key(
        model,
        records,
        layers=lay,
        dataset=dataset,
        split=split,
        prompt_format=prompt_format,
        seed=seed,
        chat=use_chat,
        name=name,
    )
    root = Path(cache_root) if cache_root is not None else _files.cache_dir() / "activations"
    path = root / f"{slug(dataset)}-{slug(split)}-{key}.safetensors"
    if cache and path.is_file():
        try:
            return Captured.load(path)
        except DataError:
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
    meta = {
        "key": key,
        "model": model_fingerprint(model, name),
        "dataset": dataset,
        "split": split,
        "prompt_format": prompt_format,
        "seed": seed,
        "chat": use_chat,
        "data_hash": data_hash(records),
        "capture_version": CAPTURE_VERSION,
    }
    cap = run_capture(
        model,
        tokenizer,
        records,
        layers=lay,
        prompt_format=prompt_format,
        seed=seed,
        chat=use_chat,
        batch_size=batch_size,
        share_prompt=share_prompt,
        progress=progress,
        meta=meta,
    )
    if cache:
        cap.save(path)
        cap.meta["path"] = str(path)
    return cap


__all__ = ["CAPTURE_VERSION", "SHARED_THRESHOLD", "Captured", "capture", "capture_key", "data_hash", "run_capture"]
