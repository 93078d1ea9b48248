"""Cached glue for the book's notebooks: models, records, editors, methods and results.

Every artifact lives under an output directory (``out_dir``, default ``runs/book``) in a path
keyed by what produced it: ``<out>/<model slug>/<train dataset>/seed<seed>/<artifact>``. A
function finds its artifact there and returns it, or computes it, writes it atomically and
returns it, so notebooks that run later (or again) reuse earlier work instead of recomputing it.

Study-wide settings (data ``source`` and split ``scheme``, ``add_bos`` for scoring, ``device`` and
``dtype`` of the models) are set once per notebook with ``configure(...)`` and enter every
artifact's key. ``model="tiny-random"`` resolves to a random 4-layer Llama (d=64) with a byte
tokenizer, saved once under ``cache_dir()``: the notebooks' tests run on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from hpr import _files
from hpr._files import slug
from hpr.data.prompts import TRAIN_FORMAT
from hpr.data.records import Record
from hpr.errors import DataError, ParameterError
from hpr.evaluation.metrics import flip_rates
from hpr.methods.registry import HPR_FAMILY

TINY = "tiny-random"
#: Methods whose artifacts are trained by ``hpr.train`` (HPR editors) rather than ``fit_method``.
HPR_METHODS = HPR_FAMILY
#: Methods compared in the paper's Table 3 (flip rates against the base model), and ours.
FLIP_METHODS = ("iti", "iti-200", "iti-k48", "iti-200-k48", "hpr", "hpr-unit")


@dataclass(frozen=True)
class Settings:
    """Study-wide options; ``None`` means the library default (offline BIG-bench data, its split
    scheme, the tokenizer's own BOS rule, float32 on CPU / bfloat16 on CUDA)."""

    source: str | None = None
    scheme: str | None = None
    add_bos: bool | None = None
    device: str = "auto"
    dtype: str | None = None
    device_map: str | None = None


SETTINGS = Settings()


def setup(
    source: str | None = None,
    add_bos: bool | None = None,
    device: str = "auto",
    dtype: str | None = None,
    device_map: str | None = None,
    threads: int = 2,
) -> Settings:
    """What every notebook runs first: ``configure`` the study settings, use at most ``threads``
    CPU threads, and keep progress bars out of the executed notebook (transformers' weight-loading
    bar would stay frozen in the page; the run log has the timings)."""
    import torch

    out = configure(source=source, add_bos=add_bos, device=device, dtype=dtype, device_map=device_map)
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass
    return out


def settings() -> Settings:
    """The study-wide options now in effect (``configure`` replaces them)."""
    return SETTINGS


def show(table: Any, digits: int | None = None) -> None:
    """Display a pandas table in a notebook the way the book renders tables: no index column,
    numbers right-aligned, text in full and wrapped (``digits``: round floats to that many places)."""
    import pandas as pd
    from IPython.display import HTML, display

    df = table.round(digits) if digits is not None else table
    with pd.option_context("display.max_colwidth", None):
        display(HTML(df.to_html(index=False, justify="right", border=0, classes="hpr-table")))


def configure(**options: Any) -> Settings:
    """Set study-wide options (``Settings`` fields; ``None`` values keep the default).

    Also flushes denormal floats (below 1.2e-38) to zero on the CPU: training editors on Gemma-3
    (large residual norms) produces denormal values, and CPU arithmetic on them is slow. Call it before the first multi-threaded torch operation of the process (the
    notebooks call it first), so that the OpenMP worker threads inherit the setting.
    """
    global SETTINGS
    import torch

    torch.set_flush_denormal(True)
    unknown = set(options) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ParameterError(
            f"unknown study setting(s) {sorted(unknown)}; known: {sorted(Settings.__dataclass_fields__)}"
        )
    SETTINGS = replace(Settings(), **{k: v for k, v in options.items() if v is not None})
    return SETTINGS


def run_dir(out_dir: str | Path, model: str, dataset: str, seed: int) -> Path:
    """``<out>/<model slug>/<dataset>/seed<seed>``, created."""
    path = Path(out_dir) / slug(model) / dataset / f"seed{seed}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------ models
def _tiny_dir() -> Path:
    """Save the tiny random Llama and its byte tokenizer once; return the folder."""
    from hpr.lm.tiny import byte_tokenizer, tiny_llama

    path = _files.cache_dir() / "models" / "tiny-random-llama-v1"
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    import shutil
    import tempfile

    tok = byte_tokenizer()
    model = tiny_llama(seed=0, max_positions=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))  # one per process: parallel jobs
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process saved it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@lru_cache(maxsize=2)
def _load(name: str, device: str, dtype: str | None, device_map: str | None = None) -> tuple[nn.Module, Any]:
    from hpr.lm.models import load_model

    if name == TINY:
        model, tok = load_model(str(_tiny_dir()), device=device, dtype=dtype)
        model.hpr_name = TINY
        return model, tok
    return load_model(name, device=device, dtype=dtype, device_map=device_map)


def get_model(name: str) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for an embedded name, a checkpoint, a hub id or ``tiny-random``, on
    the configured device and dtype."""
    return _load(name, SETTINGS.device, SETTINGS.dtype, SETTINGS.device_map)


# ------------------------------------------------------------------ data
def get_records(
    dataset: str, split: str, data_dir: str | None = None, seed: int = 0, cap: int | None = None
) -> list[Record]:
    """Records of ``dataset``/``split``; with ``cap``, a seeded sample of ``cap`` records
    stratified by subtask (``hpr.data.datasets.cap_records``; the seed is the split seed).

    ``data_dir`` may hold ``<dataset>/<split>.jsonl`` in ``Record.to_dict`` form (any custom or
    test dataset); otherwise ``hpr.data.datasets.load_split`` reads the dataset (from ``data_dir`` if set,
    with the configured source and split scheme).
    """
    from hpr.data.datasets import cap_records

    local = Path(data_dir) / dataset / f"{split}.jsonl" if data_dir else None
    if local is not None and local.is_file():
        rows = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            recs = [Record.from_dict(r) for r in rows]
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"{local}: each line must be a Record object (id, prompt, choices, correct): {exc}"
            ) from exc
    else:
        from hpr.data.datasets import load_split

        recs = load_split(dataset, split, data_dir=data_dir, seed=seed, source=SETTINGS.source, scheme=SETTINGS.scheme)
    return cap_records(dataset, recs, cap, seed)


def get_capture(
    model_name: str, dataset: str, split: str, data_dir: str | None = None, seed: int = 0, cap: int | None = None
) -> Any:
    """Captured answer-token activations of every layer (``hpr.lm.capture.capture``, cached), in the
    training prompt format of ``dataset`` (``TRAIN_FORMAT``)."""
    from hpr.lm.capture import capture

    model, tok = get_model(model_name)
    recs = get_records(dataset, split, data_dir, seed, cap)
    return capture(
        model,
        tok,
        recs,
        dataset=dataset,
        split=split,
        seed=seed,
        name=model_name,
        progress=False,
        prompt_format=TRAIN_FORMAT.get(dataset, "mc-letter"),
    )


# ------------------------------------------------------------------ editors and methods
def variant(data_dir: str | Path | None, train_cap: int | None, **params: Any) -> str:
    """A short hash of everything besides model, dataset and seed that changes an artifact: the data
    folder (parameter or ``$HPR_DATA_DIR``), the data source and split scheme, the training cap and
    method options. Artifacts made with other parameters live under another name, so a changed
    parameter never reuses a stale one."""
    folder = data_dir if data_dir is not None else os.environ.get("HPR_DATA_DIR") or None
    where = str(Path(folder).resolve()) if folder else None
    data = {"source": SETTINGS.source, "scheme": SETTINGS.scheme}
    return _files.stable_hash(
        {"data_dir": where, "train_cap": train_cap, **{k: v for k, v in data.items() if v is not None}, **params}, 8
    )


def editors_dir(
    model_name: str,
    dataset: str,
    seed: int,
    out_dir: str | Path,
    data_dir: str | None = None,
    train_cap: int | None = None,
    **train_kw: Any,
) -> Path:
    """Where the HPR editors of ``model_name`` trained on ``dataset`` live (the key includes the
    training configuration, so editors trained with other settings are never reused)."""
    from hpr.train import TrainConfig

    key = {"train_config": asdict(TrainConfig()), "format": TRAIN_FORMAT.get(dataset, "mc-letter"), **train_kw}
    return run_dir(out_dir, model_name, dataset, seed) / ("hpr-" + variant(data_dir, train_cap, **key))


def get_editors(
    model_name: str,
    dataset: str = "truthfulqa",
    data_dir: str | None = None,
    seed: int = 0,
    out_dir: str | Path = "runs/book",
    k: int = 5,
    train_cap: int | None = None,
    **train_kw: Any,
) -> Any:
    """HPR editors for every layer of ``model_name`` (top ``k`` selected), trained on ``dataset``'s
    train split (layers chosen on its val split): loaded from ``editors_dir(...)`` when present,
    else trained with ``hpr.train.train_from_model`` and saved."""
    from hpr.editor_set import EditorSet

    path = editors_dir(model_name, dataset, seed, out_dir, data_dir, train_cap, **train_kw)
    model, tok = get_model(model_name)
    if (path / "config.json").is_file():
        return EditorSet.load(path, model).top(k)
    from hpr.train import train_from_model

    train = get_records(dataset, "train", data_dir, seed, train_cap)
    val = get_records(dataset, "val", data_dir, seed, train_cap)
    editors = train_from_model(
        model,
        tok,
        train,
        val,
        k=k,
        seed=seed,
        dataset=dataset,
        name=model_name,
        prompt_format=TRAIN_FORMAT.get(dataset, "mc-letter"),
        progress=False,
        **train_kw,
    )
    editors.config["train_dataset"] = dataset
    editors.config["train_cap"] = train_cap
    editors.save(path)
    return editors.top(k)


def method_dir(
    model_name: str,
    method: str,
    dataset: str,
    seed: int,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    train_cap: int | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """Where ``method``'s fitted artifact for ``model_name`` lives (variants that differ only in how
    they are loaded, such as ITI's alpha, share one)."""
    from hpr.methods import parse_method

    spec = parse_method(method)
    base = "hpr" if spec.family in HPR_METHODS else spec.family  # (HPR editors: see editors_dir)
    opts = {**spec.fit_options, **(options or {})}
    if spec.family.startswith("diff"):
        opts["design"] = spec.family  # the authors' Diff replaced the prose design under the name "diff"
    return run_dir(out_dir, model_name, dataset, seed) / f"{base}-{variant(data_dir, train_cap, **opts)}"


def get_method(
    model_name: str,
    method: str,
    dataset: str = "truthfulqa",
    data_dir: str | None = None,
    seed: int = 0,
    out_dir: str | Path = "runs/book",
    k: int = 5,
    train_cap: int | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """A ready method object (``apply(model)`` context manager), trained once and cached.

    ``method``: any name ``hpr.methods.registry.parse_method`` accepts: ``base``, ``hpr``, ``hpr-noangle``, ``hpr-unit``,
    ``iti[-<alpha>][-k<heads>]``, ``diff`` (the authors' design), ``diff-mse`` or ``lora``.
    Diff edits HPR's selected layers.
    """
    from hpr.methods import HPR_TRAIN_OPTIONS, Unedited, fit_method, load_method, parse_method

    spec = parse_method(method)
    if spec.family == "base":
        return Unedited()
    model, tok = get_model(model_name)
    if spec.family in HPR_METHODS:
        es = get_editors(model_name, dataset, data_dir, seed, out_dir, k, train_cap, **HPR_TRAIN_OPTIONS[spec.family])
        return es.with_angle(False) if spec.family == "hpr-noangle" else es
    extra = {**spec.fit_options, **(options or {})}
    if spec.uses_k:
        extra.setdefault(
            "layers", list(get_editors(model_name, dataset, data_dir, seed, out_dir, k, train_cap).selected)
        )
    path = method_dir(model_name, method, dataset, seed, out_dir, data_dir, train_cap, extra)
    if not (path / "config.json").is_file():
        fit_method(
            spec.family,
            model=model,
            tokenizer=tok,
            train=get_records(dataset, "train", data_dir, seed, train_cap),
            val=get_records(dataset, "val", data_dir, seed, train_cap),
            out=path,
            seed=seed,
            dataset=dataset,
            **extra,
        )
    return load_method(spec.family, path, model, **spec.load_options)


# ------------------------------------------------------------------ evaluation
def results_path(
    model_name: str,
    method: str,
    dataset: str,
    seed: int,
    out_dir: str | Path,
    eval_dataset: str | None = None,
    limit: int | None = None,
    tag: str = "",
    k: int = 5,
    train_cap: int | None = None,
    data_dir: str | Path | None = None,
) -> Path:
    """The results folder ``<run dir>/results/<eval dataset>/<method>[-<tag>][-limit<N>]-<variant>``
    (``results.json`` and ``predictions.jsonl``, ``hpr.evaluation.evaluate``'s format); the variant
    hashes k (for methods that use it), the training cap, the data folder and source, and add_bos."""
    from hpr.methods import parse_method

    ev = eval_dataset or dataset
    spec = parse_method(method)  # one name per intervention: "iti-15" is "iti"
    name = spec.name + (f"-{tag}" if tag else "") + (f"-limit{limit}" if limit else "")
    bos = {"add_bos": SETTINGS.add_bos} if SETTINGS.add_bos is not None else {}
    name += "-" + variant(data_dir, train_cap, k=k if spec.uses_k else None, **bos)
    return run_dir(out_dir, model_name, dataset, seed) / "results" / ev / name


def get_results(
    model_name: str,
    method: str,
    dataset: str = "truthfulqa",
    data_dir: str | None = None,
    seed: int = 0,
    out_dir: str | Path = "runs/book",
    k: int = 5,
    eval_dataset: str | None = None,
    limit: int | None = None,
    train_cap: int | None = None,
    editor: Any = None,
    tag: str = "",
) -> dict[str, Any]:
    """Test-split results of ``method`` trained on ``dataset``, scored on ``eval_dataset`` (default:
    the training dataset), as a flat row (``hpr.evaluation.read_results``).

    Reuses the results in ``results_path(...)`` when they exist; otherwise scores the test split
    (capped to a stratified seeded sample of ``limit`` records) with ``hpr.evaluation.evaluate``,
    the pipeline ``hpr eval`` runs, whose config records what the editors were trained on, the split,
    cap, seed and study settings. ``editor`` overrides the method object (e.g. HPR with another k;
    give a distinct ``tag``).
    """
    from hpr.evaluation.evaluate import evaluate, load_results, read_results
    from hpr.methods import parse_method

    method = parse_method(method).name
    path = results_path(model_name, method, dataset, seed, out_dir, eval_dataset, limit, tag, k, train_cap, data_dir)
    if load_results(path) is not None:
        return read_results(path)
    from hpr.data.datasets import strata

    model, tok = get_model(model_name)
    target = eval_dataset or dataset
    records = get_records(target, "test", data_dir, seed, limit)
    obj = (
        editor if editor is not None else get_method(model_name, method, dataset, data_dir, seed, out_dir, k, train_cap)
    )
    config = {
        "model": model_name,
        "method": method,
        "tag": tag,
        "train_dataset": dataset,
        "split": "test",
        "cap": limit,
        "cap_seed": seed if limit else None,
        "strata": strata(target, records) if limit else None,
        "train_cap": train_cap,
        "seed": seed,
        "k": k,
        "settings": asdict(SETTINGS),
    }
    evaluate(model, tok, target, records, path, method=obj, config=config, progress=False, add_bos=SETTINGS.add_bos)
    return read_results(path)


def predictions(result: Path | str | dict[str, Any]) -> list[dict[str, Any]]:
    """The per-example predictions of a results row (``get_results``' dict) or results folder."""
    from hpr.evaluation.evaluate import load_predictions

    return load_predictions(result["path"] if isinstance(result, dict) else result)


def collect_results(out_dir: str | Path = "runs/book") -> list[dict[str, Any]]:
    """Every results row under ``out_dir`` (sorted by path; ``hpr.evaluation.read_results``)."""
    from hpr.evaluation.evaluate import RESULTS_FILE, read_results

    rows = []
    for path in sorted(Path(out_dir).glob(f"*/*/seed*/results/*/*/{RESULTS_FILE}")):
        try:
            rows.append(read_results(path.parent))
        except (ValueError, OSError):
            continue
    return rows


def study_flips(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Table 3's flip rates per model and method (``FLIP_METHODS`` against base, TruthfulQA MC1),
    from the predictions next to the main (untagged) results rows."""
    main = [
        r
        for r in rows
        if not r.get("tag")
        and r.get("dataset") == "truthfulqa"
        and r.get("train_dataset", "truthfulqa") == "truthfulqa"
    ]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for base in (r for r in main if r["method"] == "base"):
        for r in main:
            if r["model"] == base["model"] and r["method"] in FLIP_METHODS and r.get("seed") == base.get("seed"):
                f = flip_rates(predictions(base), predictions(r))
                out.setdefault(r["model"], {})[r["method"]] = {**f, "overall_acc": f["accuracy_after"]}
    return out


def results_markdown(out_dir: str | Path = "runs/book") -> str:
    """The results chapter's tables (the paper's Tables 1-3 layout, ours beside the paper's)."""
    from hpr.study.tables import results_markdown as tables_markdown

    rows = [r for r in collect_results(out_dir) if not r.get("tag")]
    return tables_markdown(rows, study_flips(rows))


def write_results_markdown(out_dir: str | Path = "runs/book", dest: str | Path = "book/_generated/results.md") -> Path:
    """Write ``results_markdown`` to ``dest`` (atomically) for the book's results chapter."""
    _files.write_text(dest, results_markdown(out_dir))
    return Path(dest)


__all__ = [
    "FLIP_METHODS",
    "HPR_METHODS",
    "SETTINGS",
    "TINY",
    "Settings",
    "collect_results",
    "configure",
    "editors_dir",
    "get_capture",
    "get_editors",
    "get_method",
    "get_model",
    "get_records",
    "get_results",
    "method_dir",
    "predictions",
    "results_markdown",
    "results_path",
    "run_dir",
    "settings",
    "show",
    "slug",
    "study_flips",
    "variant",
    "write_results_markdown",
]
