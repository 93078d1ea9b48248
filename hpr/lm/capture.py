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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
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
    common_prefix,
    max_positions,
    sliding_window,
)
from hpr.lm.passes import (
    Seq,
    fit_lengths,
    prefix_cache,
    question_groups,
    run_full,
    run_packed,
    run_shared_prompt,
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
    seqs: list[Seq] = []
    for qi, rec in enumerate(records):
        if not rec.correct or len(rec.correct) == len(rec.choices):
            raise DataError(f"record {rec.id!r} needs at least one correct and one incorrect choice")
        for _choice, ok, prompt, answer in format_record(rec, prompt_format, seed):
            enc = encode(tokenizer, prompt, answer, chat)
            seqs.append(Seq(qi, int(ok), list(enc.prompt_ids), list(enc.answer_ids)))
    fit_lengths(seqs, max_positions(model))
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
        qgroups = question_groups(by_q, seqs, batch_size, max_tokens)
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
    run = run_shared_prompt if shared else run_full
    with record_block_outputs(model, lay) as grabbed:  # layer -> its output at the latest forward
        if packed:
            prefix_kv = prefix_cache(model, seqs[0].prompt[:n_prefix], extra) if n_prefix else None
            grabbed.clear()
            for qg in tqdm(qgroups, desc="capture", unit="batch", disable=not progress):
                flat = [s for g in qg for s in g]
                outs = run_packed(model, seqs, qg, pad, grabbed, extra, n_prefix, prefix_kv)
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
