"""Activation capture: throughput vs a plain forward, and forward passes per question (CPU).

Throughput: ``hpr.lm.capture.run_capture`` on the first ``--questions`` TruthfulQA train questions
(all layers) vs plain forwards of exactly the same padded batches (same order, same padding, no
hooks, no copies), interleaved, medians. Tokens are the real (non-padding) tokens. Forward
passes per question, counted from the whole train split: ours runs each of the T + F answer
sequences once; the paper's pairwise scheme runs each of the T x F (true, false) pairs, i.e.
two sequences per pair. Prints JSON.

    python benchmarks/bench_capture.py [--questions 8] [--repeats 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

from common import alternate, bench_model, emit, median, setup_threads

#: The BIG-bench files of ``$HPR_DATA_DIR`` if set, else the bundled copy (``hpr fetch``).
DATA_DIR = os.environ.get("HPR_DATA_DIR") or None


def load_train(data_dir: str | None) -> list[Any]:
    from hpr.data.datasets import load_split

    return load_split("truthfulqa", "train", data_dir=data_dir)


def pass_counts(records: list[Any]) -> dict[str, Any]:
    """Forward sequences per question: ours (T + F) vs the paper's pairs (T x F pairs, 2 each)."""
    ours = [len(r.choices) for r in records]
    pairs = [len(r.correct) * (len(r.choices) - len(r.correct)) for r in records]
    return {
        "questions": len(records),
        "ours_sequences_per_question": statistics.mean(ours),
        "paper_pairs_per_question": statistics.mean(pairs),
        "paper_sequences_per_question": 2 * statistics.mean(pairs),
        "ours_total_sequences": sum(ours),
        "paper_total_sequences": 2 * sum(pairs),
        "reduction": 2 * sum(pairs) / sum(ours),
    }


def plain_batches(tokenizer: Any, records: list[Any], batch_size: int) -> tuple[list[Any], int]:
    """The padded ``(ids, mask)`` batches capture runs (same encoding, order, padding)."""
    import torch

    from hpr.data.prompts import DEFAULT_FORMAT, encode, format_record, has_chat_template

    chat = has_chat_template(tokenizer)
    seqs = [
        list(encode(tokenizer, p, a, chat).ids)
        for r in records
        for _c, _ok, p, a in format_record(r, DEFAULT_FORMAT, 0)
    ]
    order = sorted(range(len(seqs)), key=lambda s: -len(seqs[s]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for b in range(0, len(order), batch_size):
        batch = [seqs[s] for s in order[b : b + batch_size]]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, t in enumerate(batch):
            ids[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = 1
        out.append((ids, mask))
    return out, sum(map(len, seqs))


def run(questions: int = 8, repeats: int = 3, batch_size: int = 16, data_dir: str | None = DATA_DIR) -> dict[str, Any]:
    import torch

    from hpr.lm.capture import run_capture

    threads = setup_threads()
    records = load_train(data_dir)
    result: dict[str, Any] = {
        "benchmark": "capture",
        "device": "cpu",
        "threads": threads,
        "forward_passes": pass_counts(records),
    }
    model, tok, info = bench_model()
    result.update(info)
    if tok is None:
        result["throughput"] = None
        result["skipped"] = "no tokenizer: the embedded model is unavailable"
        return result
    subset = records[:questions]
    batches, tokens = plain_batches(tok, subset, batch_size)

    def plain() -> None:
        with torch.no_grad():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask, use_cache=False)

    def cap() -> None:
        with torch.no_grad():
            run_capture(model, tok, subset, batch_size=batch_size, progress=False)

    fns = {"plain": plain, "capture": cap}
    import inspect

    if "share_prompt" in inspect.signature(run_capture).parameters:

        def cap_full() -> None:  # the same batches as `plain`, plus the capture hooks and copies
            with torch.no_grad():
                run_capture(model, tok, subset, batch_size=batch_size, progress=False, share_prompt=False)

        fns["capture_full_batches"] = cap_full
    t = alternate(fns, repeats)
    tps = {k: tokens / median(v) for k, v in t.items()}
    result["throughput"] = {
        "questions": len(subset),
        "sequences": sum(len(r.choices) for r in subset),
        "tokens": tokens,
        "batch_size": batch_size,
        "repeats": repeats,
        "median_s": {k: median(v) for k, v in t.items()},
        "tokens_per_s": tps,
        "capture_over_plain": tps["capture"] / tps["plain"],
        "capture_full_batches_over_plain": (
            tps["capture_full_batches"] / tps["plain"] if "capture_full_batches" in tps else None
        ),
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--data-dir", default=DATA_DIR)
    a = ap.parse_args()
    emit(run(a.questions, a.repeats, a.batch_size, a.data_dir or None))


if __name__ == "__main__":
    main()
