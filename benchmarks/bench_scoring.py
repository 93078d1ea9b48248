"""Native prefix-sharing scorer vs lm-eval on TruthfulQA MC1+MC2, side by side in one run.

Counts the tokens that go through the model in each engine (``input_ids`` elements of every
forward call, padding included, via a forward pre-hook), the wall time of each, and checks
that both give the same MC1 choice for every question and MC2 within 1e-4. Prints JSON.

    python benchmarks/bench_scoring.py --model smollm2-135m-instruct [--limit N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dataset", default="truthfulqa")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="first N questions (default: all)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size of both engines")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import lm_eval  # noqa: F401  (import time is not part of the measurement)

    from hpr.data import datasets as data
    from hpr.evaluation import lmeval, tasks
    from hpr.evaluation.metrics import predict, summarize
    from hpr.evaluation.scoring import score
    from hpr.lm.kv import count_tokens
    from hpr.lm.models import load_model

    model, tok = load_model(args.model)
    records = data.load_split(args.dataset, args.split)
    if args.limit:
        records = records[: args.limit]
    reqs = [tasks.request(args.dataset, r) for r in records]
    score(model, tok, reqs[:2], progress=False)  # warm-up, not timed

    t0 = time.perf_counter()
    with count_tokens(model) as n_native:
        native = score(model, tok, reqs, batch_size=args.batch_size, progress=False)
    t_native = time.perf_counter() - t0

    t0 = time.perf_counter()
    with count_tokens(model) as n_lm:
        ll, _ = lmeval.run(model, tok, args.dataset, records, batch_size=args.batch_size)
    t_lm = time.perf_counter() - t0

    a = [predict(args.dataset, r, x) for r, x in zip(records, native, strict=True)]
    b = [predict(args.dataset, r, x) for r, x in zip(records, ll, strict=True)]
    out = {
        "model": args.model,
        "dataset": f"{args.dataset}/{args.split}",
        "questions": len(records),
        "choices": sum(len(r.choices) for r in records),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "native": {"tokens": n_native.tokens, "model_calls": n_native.calls, "wall_s": round(t_native, 2)},
        "lm_eval": {"tokens": n_lm.tokens, "model_calls": n_lm.calls, "wall_s": round(t_lm, 2)},
        "token_ratio": round(n_lm.tokens / n_native.tokens, 2),
        "time_ratio": round(t_lm / t_native, 2),
        "same_choices": [x["chosen"] for x in a] == [x["chosen"] for x in b],
        "max_abs_loglik_diff": max(
            abs(x - y) for p, q in zip(native, ll, strict=True) for x, y in zip(p, q, strict=True)
        ),
        "native_metrics": summarize(args.dataset, a),
        "lm_eval_metrics": summarize(args.dataset, b),
    }
    if args.dataset == "truthfulqa":
        out["max_mc2_diff"] = max(abs(x["mc2"] - y["mc2"]) for x, y in zip(a, b, strict=True))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
