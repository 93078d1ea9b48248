"""Run one evaluation: model + method + records -> predictions JSONL + results JSON.

``evaluate`` scores every record with the native prefix-sharing scorer (``engine="native"``) or
lm-eval (``engine="lm-eval"``), writes ``predictions.jsonl`` (one row per record, see
``hpr.evaluation.metrics``) and then ``results.json`` (metrics with standard errors, config, package
versions, git commit, timings, tokens through the model) into ``out_dir``, both atomically.
``results.json`` is written last, so its presence marks a finished run: a rerun with the same
config returns it without scoring again.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from torch import nn

from hpr import _files
from hpr.data.records import Record
from hpr.errors import ParameterError
from hpr.evaluation import metrics, scoring, tasks
from hpr.lm.kv import count_tokens

ENGINES = ("native", "lm-eval")
PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"
FORMAT = "hpr-eval/1"
_PACKAGES = ("hpr", "torch", "transformers", "lm_eval", "numpy", "datasets")


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages an evaluation depends on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def evaluate_task(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    out_dir: str | Path,
    *,
    method: Any = None,
    limit: int | None = None,
    batch_size: int = 8,
    config: Mapping[str, Any] | None = None,
    force: bool = False,
    add_bos: bool | None = None,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """Any lm-eval task (a registry name or a task YAML's path) on ``model`` edited by ``method``,
    written in the same results format as ``evaluate``: ``results.json`` with lm-eval's metrics
    (``{"value", "stderr", "n"}`` per metric of the task), the config, versions and git commit, and
    ``predictions.jsonl`` with lm-eval's per-sample rows. ``read_results`` reads it back."""
    from hpr.evaluation import lmeval

    cfg = {
        **dict(config or {}),
        "dataset": str(task),
        "task": str(task),
        "engine": "lm-eval",
        "batch_size": batch_size,
        "add_bos": add_bos,
        "limit": limit,
        "num_fewshot": num_fewshot,
    }
    out = Path(out_dir)
    done = load_results(out)
    if done is not None and not force and done.get("config") == json.loads(json.dumps(cfg, default=str)):
        return done
    t0 = time.perf_counter()
    with count_tokens(model) as count:
        res = lmeval.run_task(
            model,
            tokenizer,
            task,
            method=method,
            limit=limit,
            batch_size=batch_size,
            add_bos=add_bos,
            num_fewshot=num_fewshot,
        )
    score_s = time.perf_counter() - t0
    metrics: dict[str, Any] = {}
    for tname, vals in res["results"].items():
        n = len(res.get("samples", {}).get(tname, []))
        for key, value in vals.items():
            metric, _, flt = key.partition(",")
            if metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            err = vals.get(f"{metric}_stderr,{flt}")
            name = metric if len(res["results"]) == 1 else f"{tname}/{metric}"
            metrics[name] = {
                "value": float(value),
                "stderr": float(err) if isinstance(err, int | float) else None,
                "n": n,
                "filter": flt,
            }
    cfg["n"] = max((m["n"] for m in metrics.values()), default=0)
    rows = [
        {
            "task": t,
            "id": s.get("doc_id"),
            "target": s.get("target"),
            "responses": [
                [float(x) if isinstance(x, int | float) else str(x) for x in r]
                if isinstance(r, list | tuple)
                else str(r)
                for r in s.get("filtered_resps", [])
            ],
        }
        for t, samples in res.get("samples", {}).items()
        for s in samples
    ]
    _files.write_jsonl(out / PREDICTIONS_FILE, rows)
    results = {
        "format": FORMAT,
        "metrics": metrics,
        "config": cfg,
        "tokens": count.tokens,
        "model_calls": count.calls,
        "lm_eval": {"versions": res.get("versions"), "n-shot": res.get("n-shot"), "results": res["results"]},
        "timings": {"score_s": round(score_s, 3)},
        "versions": versions(),
        "git": _git(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "predictions": PREDICTIONS_FILE,
    }
    _files.write_json(out / RESULTS_FILE, results)
    return results


def _git() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout holding this package, or None outside git."""
    got = _files.git_commit()
    return None if got is None else {"commit": got[0], "dirty": got[1]}


def load_results(out_dir: str | Path) -> dict[str, Any] | None:
    """The finished results in ``out_dir``, or ``None`` if there are none (or unreadable)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == FORMAT else None


def read_results(out_dir: str | Path) -> dict[str, Any]:
    """The finished results in ``out_dir`` as one flat row: the run's config (model, method,
    dataset, split, n, engine, and what the caller added: training dataset, cap, seed, ...), then
    ``metrics``, ``seconds`` (scoring time), ``tokens``, ``versions``, ``git``, ``created`` and
    ``path`` (the folder). The one reader of results, for ``hpr eval`` and the book alike;
    ``ValueError`` when ``out_dir`` holds no finished run."""
    res = load_results(out_dir)
    if res is None:
        raise ValueError(f"{out_dir} holds no finished evaluation ({RESULTS_FILE})")
    row = {
        **res["config"],
        "metrics": res["metrics"],
        "seconds": res.get("timings", {}).get("score_s"),
        "tokens": res.get("tokens"),
        "versions": res.get("versions"),
        "git": res.get("git"),
        "created": res.get("created"),
        "path": str(out_dir),
    }
    row.setdefault("tag", "")
    return row


def load_predictions(out_dir: str | Path) -> list[dict[str, Any]]:
    """The prediction rows of a finished run in ``out_dir``."""
    path = Path(out_dir) / PREDICTIONS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def score_records(
    model: nn.Module,
    tokenizer: Any,
    dataset: str,
    records: Sequence[Record],
    *,
    method: Any = None,
    engine: str = "native",
    batch_size: int = 16,
    progress: bool = True,
    add_bos: bool | None = None,
) -> tuple[list[list[float]], dict[str, Any]]:
    """Per-record, per-choice log-likelihoods with ``engine``; second value: engine extras.

    ``add_bos``: ``None`` the tokenizer's default, ``False`` no BOS, ``True`` exactly one BOS
    (``hpr.evaluation.scoring.tok_encode``).
    """
    tasks.check_dataset(dataset)
    if engine == "native":
        reqs = [tasks.request(dataset, r) for r in records]
        with count_tokens(model) as count:
            ll = scoring.score(
                model,
                tokenizer,
                reqs,
                method=method,
                batch_size=batch_size,
                progress=progress,
                add_bos=add_bos,
            )
        return ll, {"tokens": count.tokens, "model_calls": count.calls}
    if engine == "lm-eval":
        from hpr.evaluation import lmeval

        with count_tokens(model) as count:
            ll, summary = lmeval.run(
                model, tokenizer, dataset, records, method=method, batch_size=batch_size, add_bos=add_bos
            )
        return ll, {"tokens": count.tokens, "model_calls": count.calls, "lm_eval": summary}
    raise ParameterError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    dataset: str,
    records: Sequence[Record],
    out_dir: str | Path,
    *,
    method: Any = None,
    engine: str = "native",
    batch_size: int = 16,
    config: Mapping[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
    timings: Mapping[str, float] | None = None,
    add_bos: bool | None = None,
) -> dict[str, Any]:
    """Score ``records``, write predictions and results into ``out_dir``; return the results.

    ``timings`` (e.g. ``{"load_s": ...}``) are added to the measured scoring time.
    ``add_bos``: ``None`` the tokenizer's default (lm-eval's), ``False`` no BOS (the authors'
    scoring), ``True`` exactly one BOS. ``config`` (model, split, method name, editors dir, seed,
    limit, ...) is stored in the results together with dataset, engine, batch size, ``add_bos``
    and the records' hash; a finished run with an equal config is returned as is unless ``force``.
    """
    if not records:
        raise ParameterError(f"no {dataset} records to evaluate; check the split and --limit")
    if engine not in ENGINES:
        raise ParameterError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    cfg = {
        **dict(config or {}),
        "dataset": dataset,
        "engine": engine,
        "batch_size": batch_size,
        "add_bos": add_bos,
        "n": len(records),
        "records_hash": _files.stable_hash([r.to_dict() for r in records]),
    }
    out = Path(out_dir)
    done = load_results(out)
    if done is not None and not force and done.get("config") == json.loads(json.dumps(cfg, default=str)):
        return done
    t0 = time.perf_counter()
    ll, extra = score_records(
        model,
        tokenizer,
        dataset,
        records,
        method=method,
        engine=engine,
        batch_size=batch_size,
        progress=progress,
        add_bos=add_bos,
    )
    score_s = time.perf_counter() - t0
    rows: list[Mapping[str, Any]] = [metrics.predict(dataset, r, x) for r, x in zip(records, ll, strict=True)]
    _files.write_jsonl(out / PREDICTIONS_FILE, rows)
    results = {
        "format": FORMAT,
        "metrics": metrics.summarize(dataset, rows),
        "config": cfg,
        **{k: v for k, v in extra.items() if k in ("tokens", "model_calls", "lm_eval")},
        "timings": {
            **dict(timings or {}),
            "score_s": round(score_s, 3),
            "per_example_s": round(score_s / len(records), 4),
        },
        "versions": versions(),
        "git": _git(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "predictions": PREDICTIONS_FILE,
    }
    _files.write_json(out / RESULTS_FILE, results)
    return results


__all__ = [
    "ENGINES",
    "evaluate",
    "evaluate_task",
    "load_predictions",
    "load_results",
    "read_results",
    "score_records",
    "versions",
]
