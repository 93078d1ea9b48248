"""Cached glue for the book's notebooks: models, records, captures, editors and methods (results:
``hpr.study.results``).

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

    tok = byte_tokenizer()
    model = tiny_llama(seed=0, max_positions=2048)
    tmp = _files.staging_dir(path)  # one per process: parallel jobs
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process saved it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@lru_cache(maxsize=2)
def _load(name: str, device: str, dtype: str | None, device_map: str | None = None) -> tuple[nn.Module, Any]:
    """With a ``device_map``, blocks it puts on the disk keep their weights in a fresh folder under
    ``cache_dir()/offload`` (only checkpoints that are not safetensors write there), removed when
    the model is freed or the process ends, or by the next load if the process was killed first."""
    from hpr.lm.models import load_model

    if name == TINY:
        model, tok = load_model(str(_tiny_dir()), device=device, dtype=dtype)
        model.hpr_name = TINY
        return model, tok
    if device_map is None:
        return load_model(name, device=device, dtype=dtype)
    import shutil
    import weakref

    folder = _files.process_dir(_files.cache_dir() / "offload", name)
    try:
        model, tok = load_model(name, device=device, dtype=dtype, device_map=device_map, offload_folder=folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(model, shutil.rmtree, folder, True)
    return model, tok


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


__all__ = [
    "FLIP_METHODS",
    "HPR_METHODS",
    "SETTINGS",
    "TINY",
    "Settings",
    "configure",
    "editors_dir",
    "get_capture",
    "get_editors",
    "get_method",
    "get_model",
    "get_records",
    "method_dir",
    "run_dir",
    "settings",
    "show",
    "slug",
    "variant",
]
