"""Cached glue for the book's notebooks: models, records, editors, methods and results.

Every artifact lives under an output directory (``out_dir``, default ``runs/book``) in a path
keyed by what produced it: ``<out>/<model slug>/<dataset>/seed<seed>/<artifact>``. A function
finds its artifact there and returns it, or computes it, writes it atomically and returns it,
so notebooks that run later (or again) reuse earlier work instead of recomputing it.

``model="tiny-random"`` resolves to a random 4-layer Llama (d=64) with a byte tokenizer, saved
once under ``cache_dir()``: the notebooks' tests run on it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from . import io
from .errors import DataError, ParameterError
from .metrics import predict, summarize
from .records import Record

TINY = "tiny-random"
#: Methods whose artifacts are trained by ``hpr.train`` (HPR editors) rather than ``fit_method``.
HPR_METHODS = ("hpr", "hpr-noangle")


def slug(name: str) -> str:
    """A file-system-safe name for a model spec (``org/name`` -> ``org--name``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", name.strip("/")).strip("-") or "model"


def run_dir(out_dir: str | Path, model: str, dataset: str, seed: int) -> Path:
    """``<out>/<model slug>/<dataset>/seed<seed>``, created."""
    path = Path(out_dir) / slug(model) / dataset / f"seed{seed}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------ models
def _tiny_dir() -> Path:
    """Save the tiny random Llama and its byte tokenizer once; return the folder."""
    from .tiny import byte_tokenizer, tiny_llama

    path = io.cache_dir() / "models" / "tiny-random-llama-v1"
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    tok = byte_tokenizer()
    model = tiny_llama(seed=0, max_positions=2048)
    tmp = path.with_name(path.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(path)
    return path


@lru_cache(maxsize=2)
def get_model(name: str) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for an embedded name, a checkpoint, a hub id or ``tiny-random``."""
    from .models import load_model

    if name == TINY:
        model, tok = load_model(str(_tiny_dir()))
        model.hpr_name = TINY
        return model, tok
    return load_model(name)


# ------------------------------------------------------------------ data
def get_records(dataset: str, split: str, data_dir: str | None = None, seed: int = 0,
                cap: int | None = None) -> list[Record]:
    """Records of ``dataset``/``split``, the first ``cap`` when given.

    ``data_dir`` may hold ``<dataset>/<split>.jsonl`` in ``Record.to_dict`` form (any custom or
    test dataset); otherwise ``hpr.data.load_split`` reads the dataset (from ``data_dir`` if set).
    """
    local = Path(data_dir) / dataset / f"{split}.jsonl" if data_dir else None
    if local is not None and local.is_file():
        rows = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            recs = [Record(r["id"], r["prompt"], tuple(r["choices"]), tuple(r["correct"]), r.get("meta", {}),
                           r.get("best"), tuple(r["mc1"]) if r.get("mc1") is not None else None) for r in rows]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{local}: each line must be a Record object (id, prompt, choices, correct): {exc}") from exc
    else:
        from .data import load_split

        recs = load_split(dataset, split, data_dir=data_dir, seed=seed)
    if cap is not None and cap < len(recs):
        recs = recs[: int(cap)]
    return recs


def get_capture(model_name: str, dataset: str, split: str, data_dir: str | None = None, seed: int = 0,
                cap: int | None = None) -> Any:
    """Captured answer-token activations of every layer (``hpr.capture.capture``, cached)."""
    from .capture import capture

    model, tok = get_model(model_name)
    recs = get_records(dataset, split, data_dir, seed, cap)
    return capture(model, tok, recs, dataset=dataset, split=split, seed=seed, name=model_name, progress=False)


# ------------------------------------------------------------------ editors and methods
def get_editors(model_name: str, dataset: str = "truthfulqa", data_dir: str | None = None, seed: int = 0,
                out_dir: str | Path = "runs/book", k: int = 5, train_cap: int | None = None, **train_kw: Any) -> Any:
    """HPR editors for every layer of ``model_name`` (top ``k`` selected): loaded from
    ``<run dir>/hpr`` when present, else trained with ``hpr.train.train_from_model`` and saved."""
    from .editor import EditorSet

    path = run_dir(out_dir, model_name, dataset, seed) / ("hpr-" + variant(data_dir, train_cap, **train_kw))
    model, tok = get_model(model_name)
    if (path / "config.json").is_file():
        return EditorSet.load(path, model).top(k)
    from .train import train_from_model

    train = get_records(dataset, "train", data_dir, seed, train_cap)
    val = get_records(dataset, "val", data_dir, seed, train_cap)
    editors = train_from_model(model, tok, train, val, k=k, seed=seed, dataset=dataset, name=model_name,
                               **train_kw)
    editors.save(path)
    return editors.top(k)


def variant(data_dir: str | Path | None, train_cap: int | None, **params: Any) -> str:
    """A short hash of everything besides model, dataset and seed that changes an artifact: the data
    folder (parameter or ``$HPR_DATA_DIR``), the training cap and method options. Artifacts made with
    other parameters live under another name, so a changed parameter never reuses a stale one."""
    folder = data_dir if data_dir is not None else os.environ.get("HPR_DATA_DIR") or None
    where = str(Path(folder).resolve()) if folder else None
    return io.stable_hash({"data_dir": where, "train_cap": train_cap, **params}, 8)


def method_dir(model_name: str, method: str, dataset: str, seed: int, out_dir: str | Path,
               data_dir: str | Path | None = None, train_cap: int | None = None,
               options: dict[str, Any] | None = None) -> Path:
    """Where ``method``'s artifact for ``model_name`` lives (ITI variants share ``iti``)."""
    base = "hpr" if method in HPR_METHODS else method.split("-")[0]
    return run_dir(out_dir, model_name, dataset, seed) / f"{base}-{variant(data_dir, train_cap, **(options or {}))}"


def get_method(model_name: str, method: str, dataset: str = "truthfulqa", data_dir: str | None = None,
               seed: int = 0, out_dir: str | Path = "runs/book", k: int = 5, train_cap: int | None = None,
               options: dict[str, Any] | None = None) -> Any:
    """A ready method object (``apply(model)`` context manager), trained once and cached.

    ``method``: ``base``, ``hpr``, ``hpr-noangle``, ``iti`` / ``iti-15`` / ``iti-200`` (alpha),
    ``diff`` or ``lora``.
    """
    from .methods import Base, fit_method, load_method

    if method == "base":
        return Base()
    model, tok = get_model(model_name)
    if method in HPR_METHODS:
        es = get_editors(model_name, dataset, data_dir, seed, out_dir, k, train_cap)
        return es.with_angle(False) if method == "hpr-noangle" else es
    name, _, arg = method.partition("-")
    load_kw: dict[str, Any] = {}
    if name == "iti" and arg:
        try:
            load_kw["alpha"] = float(arg)
        except ValueError:
            raise ParameterError(f"bad ITI method {method!r}: write iti-<alpha>, e.g. iti-15") from None
    elif arg:
        raise ParameterError(f"unknown method {method!r}; use base, hpr, hpr-noangle, iti[-alpha], diff or lora")
    extra = dict(options or {})
    if name == "diff":
        extra.setdefault("layers", list(get_editors(model_name, dataset, data_dir, seed, out_dir, k, train_cap).selected))
    path = method_dir(model_name, method, dataset, seed, out_dir, data_dir, train_cap, extra)
    if not (path / "config.json").is_file():
        fit_method(name, model=model, tokenizer=tok, train=get_records(dataset, "train", data_dir, seed, train_cap),
                   val=get_records(dataset, "val", data_dir, seed, train_cap), out=path, seed=seed,
                   dataset=dataset, **extra)
    return load_method(name, path, model, **load_kw)


# ------------------------------------------------------------------ evaluation
def results_path(model_name: str, method: str, dataset: str, seed: int, out_dir: str | Path,
                 eval_dataset: str | None = None, limit: int | None = None, tag: str = "",
                 k: int = 5, train_cap: int | None = None, data_dir: str | Path | None = None) -> Path:
    """``<run dir>/results/<eval dataset>/<method>[-<tag>][-limit<N>]-<variant>.json``; the variant
    hashes k (for methods that use it), the training cap and the data folder."""
    ev = eval_dataset or dataset
    uses_k = method in HPR_METHODS or method == "diff"
    name = method + (f"-{tag}" if tag else "") + (f"-limit{limit}" if limit else "")
    name += "-" + variant(data_dir, train_cap, k=k if uses_k else None)
    return run_dir(out_dir, model_name, dataset, seed) / "results" / ev / f"{name}.json"


def get_results(model_name: str, method: str, dataset: str = "truthfulqa", data_dir: str | None = None,
                seed: int = 0, out_dir: str | Path = "runs/book", k: int = 5, eval_dataset: str | None = None,
                limit: int | None = None, train_cap: int | None = None, editor: Any = None,
                tag: str = "") -> dict[str, Any]:
    """Test-split results of ``method`` on ``eval_dataset`` (default: the training dataset).

    Reuses ``results_path(...)`` when it exists; otherwise scores the test split with the native
    engine (``hpr.evaluate``), writes the results JSON (metrics, config, timings) and the
    per-example predictions (JSONL) next to it. ``editor`` overrides the method object (e.g. HPR
    with another k; give a distinct ``tag``).
    """
    path = results_path(model_name, method, dataset, seed, out_dir, eval_dataset, limit, tag, k, train_cap, data_dir)
    if path.is_file():
        return {**json.loads(path.read_text(encoding="utf-8")), "path": str(path)}
    model, tok = get_model(model_name)
    target = eval_dataset or dataset
    records = get_records(target, "test", data_dir, seed, limit)
    obj = editor if editor is not None else get_method(model_name, method, dataset, data_dir, seed, out_dir, k,
                                                       train_cap)
    t0 = time.perf_counter()
    rows = score_records(model, tok, target, records, obj)
    seconds = time.perf_counter() - t0

    res = {"model": model_name, "method": method, "tag": tag, "train_dataset": dataset, "dataset": target,
           "split": "test", "n": len(records), "limit": limit, "seed": seed, "k": k, "engine": "native",
           "metrics": summarize(target, rows), "seconds": round(seconds, 2)}
    io.write_jsonl(path.with_suffix(".jsonl"), list[Any](rows))
    io.write_json(path, res)
    return {**res, "path": str(path)}


def score_records(model: nn.Module, tokenizer: Any, dataset: str, records: Sequence[Record],
                  method: Any = None, batch_size: int = 16) -> list[dict[str, Any]]:
    """Prediction rows (``hpr.metrics.predict``) of ``records`` scored by the native engine."""
    from .scoring import score
    from .tasks import request

    reqs = [request(dataset, r) for r in records]
    lls = score(model, tokenizer, reqs, method=method, batch_size=batch_size, progress=False)
    return [predict(dataset, r, ll) for r, ll in zip(records, lls, strict=True)]


def predictions(result: Path | str | dict[str, Any]) -> list[dict[str, Any]]:
    """The per-example predictions saved next to a results JSON (its path, or the dict that
    ``get_results`` returned)."""
    where = result["path"] if isinstance(result, dict) else result
    path = Path(where).with_suffix(".jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def collect_results(out_dir: str | Path = "runs/book") -> list[dict[str, Any]]:
    """Every results JSON under ``out_dir`` (sorted by path)."""
    root = Path(out_dir)
    rows = []
    for path in sorted(root.glob("*/*/seed*/results/*/*.json")):
        try:
            rows.append({**json.loads(path.read_text(encoding="utf-8")), "path": str(path)})
        except json.JSONDecodeError:
            continue
    return rows


def results_markdown(out_dir: str | Path = "runs/book", methods: Sequence[str] | None = None) -> str:
    """The results summary table (paper claims next to our measurements) as Markdown."""
    from .paper import paper_value

    rows = [r for r in collect_results(out_dir) if not r.get("tag")]
    if methods:
        rows = [r for r in rows if r["method"] in methods]
    if not rows:
        return ("*No results yet: run `hpr run` (or `make book`) to produce them; this table is generated "
                "from the results files.*\n")
    lines = ["| model | dataset | method | metric | ours (± stderr) | paper |", "|---|---|---|---|---|---|"]
    for r in rows:
        for metric, val in r["metrics"].items():
            if not isinstance(val, dict) or "value" not in val:
                continue
            ours = f"{100 * val['value']:.1f} ± {100 * val.get('stderr', 0.0):.1f}"
            paper = paper_value(r["dataset"], r["method"], metric)
            capped = f", first {r['limit']} test examples" if r.get("limit") else ""
            lines.append(f"| {r['model']} | {r['dataset']} (n={r['n']}{capped}) | {r['method']} | {metric} | {ours} | "
                         f"{paper} |")
    return "\n".join(lines) + "\n"


def write_results_markdown(out_dir: str | Path = "runs/book", dest: str | Path = "book/_generated/results.md") -> Path:
    """Write ``results_markdown`` to ``dest`` (atomically) for the book's results chapter."""
    io.write_text(dest, results_markdown(out_dir))
    return Path(dest)


__all__ = ["HPR_METHODS", "TINY", "collect_results", "get_capture", "get_editors", "get_method", "get_model", "get_records",
           "get_results", "method_dir", "variant", "predictions", "results_markdown", "results_path", "run_dir", "slug",
           "write_results_markdown"]
