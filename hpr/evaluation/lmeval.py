"""lm-evaluation-harness integration: an edited model as an lm-eval ``LM``, and our records as tasks.

``as_lm_eval(model, tokenizer, method)`` wraps a loaded model as lm-eval's ``HFLM`` whose every
forward pass runs inside ``method.apply(model)``. ``task_specs(dataset)`` lists the lm-eval tasks
of a dataset for ``simple_evaluate``:

- TruthfulQA: lm-eval's own ``truthfulqa_mc1`` and ``truthfulqa_mc2`` configurations (prompt,
  choices, target, and ``process_results``, i.e. lm-eval's MC2 code), with only the dataset
  source replaced: the documents are our records in the hub's ``truthful_qa`` row layout
  (``hpr.evaluation.tasks.truthfulqa_doc``), named ``hpr_truthfulqa_mc1``/``hpr_truthfulqa_mc2``.
- ToxiGen, BBQ, simple ethical questions: the task YAMLs in ``hpr/tasks`` (our prompts).

So::

    lm = as_lm_eval(model, tok, editors)
    lm_eval.simple_evaluate(model=lm, tasks=task_specs("truthfulqa"), task_manager=task_manager())

scores the edited model on our records without the hub (documents from ``hpr.evaluation.tasks.provide``, else
``hpr.data.datasets.load_split``). ``run(...)`` does that for a list of records and returns per-record,
per-choice log-likelihoods in ``Record.choices`` order and lm-eval's own aggregated metrics.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from hpr._extras import require
from hpr.data.records import Record
from hpr.errors import DataError
from hpr.evaluation import scoring, tasks

#: Our TruthfulQA task name -> the lm-eval task whose configuration it reuses.
TRUTHFULQA_TASKS = {"hpr_truthfulqa_mc1": "truthfulqa_mc1", "hpr_truthfulqa_mc2": "truthfulqa_mc2"}


def offline() -> None:
    """Tell the hub clients not to wait on the network (we never use the hub here)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def as_lm_eval(
    model: nn.Module, tokenizer: Any, method: Any = None, batch_size: int = 8, add_bos: bool | None = None
) -> Any:
    """An lm-eval ``HFLM`` over ``model`` whose forward passes are edited by ``method``.

    ``method``: anything with an ``apply(model)`` context manager (``hpr.EditorSet``, the
    baselines); ``None`` scores the model as is. ``add_bos`` is HFLM's ``add_bos_token``
    (``None``: the tokenizer's default; ``False``: no special tokens). HFLM's ``True`` only asks
    the tokenizer for its special tokens, which holds no BOS for many tokenizers (GPT-2 style);
    here ``True`` also puts a BOS in front when missing, as ``hpr.evaluation.scoring.tok_encode`` does.
    """
    offline()
    require("lm_eval", "eval", "the lm-eval engine")
    from lm_eval.models.huggingface import HFLM

    class EditedHFLM(HFLM):  # type: ignore[misc]
        """HFLM that runs every model call inside ``method.apply(model)``."""

        def tok_encode(
            self,
            string: str,
            add_special_tokens: bool | None = None,
            left_truncate_len: int | None = None,
            **kwargs: Any,
        ) -> list[int]:
            ids = super().tok_encode(string, add_special_tokens, None, **kwargs)
            if add_bos and add_special_tokens is not False:
                ids = scoring.ensure_bos(self.tokenizer, ids)
            return ids[-left_truncate_len:] if left_truncate_len else ids

        def _model_call(self, *args: Any, **kwargs: Any) -> Any:
            if method is None:
                return super()._model_call(*args, **kwargs)
            with method.apply(self.model):
                return super()._model_call(*args, **kwargs)

        def _model_generate(self, *args: Any, **kwargs: Any) -> Any:
            if method is None:
                return super()._model_generate(*args, **kwargs)
            with method.apply(self.model):
                return super()._model_generate(*args, **kwargs)

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return EditedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos)


def lm_eval_tasks_dir() -> Path:
    """The folder of lm-eval's own task YAMLs (``lm_eval/tasks``)."""
    require("lm_eval", "eval", "the lm-eval engine")
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def task_manager(metadata: dict[str, Any] | None = None, include_defaults: bool = False) -> Any:
    """An lm-eval ``TaskManager`` over lm-eval's TruthfulQA tasks and the YAMLs in ``hpr/tasks``.

    ``include_defaults=True`` also indexes every lm-eval task (slow: all of lm-eval's YAMLs).
    """
    offline()
    from lm_eval.tasks import TaskManager

    paths = [str(lm_eval_tasks_dir() / "truthfulqa"), str(tasks.TASKS_DIR)]
    return TaskManager(include_path=paths, include_defaults=include_defaults, metadata=metadata)


def truthfulqa_config(name: str, manager: Any = None) -> dict[str, Any]:
    """lm-eval's own configuration of ``TRUTHFULQA_TASKS[name]``, functions resolved, with only
    the dataset source replaced: ``hpr.evaluation.tasks.load_docs`` (our records) instead of the hub."""
    if name not in TRUTHFULQA_TASKS:
        raise DataError(f"unknown TruthfulQA task {name!r}; choose one of {', '.join(TRUTHFULQA_TASKS)}")
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = manager or task_manager()
    entry = manager.task_index.get(TRUTHFULQA_TASKS[name])
    if entry is None or entry.yaml_path is None:
        raise DataError(f"lm-eval has no task {TRUTHFULQA_TASKS[name]!r}; install lm-eval 0.4.13")
    cfg = dict(load_yaml(entry.yaml_path, resolve_func=True))
    cfg.pop("tag", None)  # our task is not one of lm-eval's ``truthfulqa`` group
    meta = cfg.get("metadata")
    cfg["metadata"] = {**(meta if isinstance(meta, dict) else {}), "lm_eval_yaml": str(entry.yaml_path)}
    cfg.update(
        task=name,
        dataset_path=None,
        dataset_name=None,
        custom_dataset=tasks.load_docs,
        dataset_kwargs={"hpr_dataset": "truthfulqa"},
    )
    return cfg


def task_specs(dataset: str, manager: Any = None, mc2_only: bool = False) -> list[Any]:
    """The ``tasks`` argument of ``simple_evaluate`` for ``dataset`` (names, or config dicts for
    TruthfulQA); ``mc2_only`` keeps only TruthfulQA's MC2 task."""
    tasks.check_dataset(dataset)
    names = list(tasks.TASKS[dataset])
    if dataset != "truthfulqa":
        return names
    if mc2_only:
        names = ["hpr_truthfulqa_mc2"]
    manager = manager or task_manager()
    return [truthfulqa_config(n, manager) for n in names]


def _per_doc(samples: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    return {str(s["doc"]["id"]): [float(r[0]) for r in s["filtered_resps"]] for s in samples}


def _truthfulqa_logliks(record: Record, per_task: dict[str, dict[str, list[float]]]) -> list[float]:
    """Log-likelihoods over ``record.choices`` from the MC2 task's and the MC1 task's choices."""
    ll = [math.nan] * len(record.choices)
    parts = (("hpr_truthfulqa_mc2", tasks.mc2_indices(record)), ("hpr_truthfulqa_mc1", record.mc1 or ()))
    for name, idx in parts:
        if name in per_task:
            for pos, i in enumerate(idx):
                ll[i] = per_task[name][record.id][pos]
    missing = [i for i, x in enumerate(ll) if math.isnan(x)]
    if missing:
        raise DataError(
            f"choices {missing} of {record.id!r} are in neither the MC1 nor the scored MC2 "
            "choices; run without mc2_only or fix the record's mc1/mc2 indices"
        )
    return ll


def run(
    model: nn.Module,
    tokenizer: Any,
    dataset: str,
    records: Sequence[Record],
    *,
    method: Any = None,
    batch_size: int = 8,
    mc2_only: bool = False,
    add_bos: bool | None = None,
) -> tuple[list[list[float]], dict[str, Any]]:
    """Score ``records`` with lm-eval: per-record log-likelihoods over ``Record.choices``.

    Returns ``(logliks, lm_eval_results)``; the second holds lm-eval's own aggregated metrics
    per task (for TruthfulQA computed by lm-eval's ``process_results``). For TruthfulQA the MC1
    choices' log-likelihoods come from the MC1 task and the others from the MC2 task (they score
    the same strings); ``mc2_only`` runs only the MC2 task, at half the cost, when its choices
    cover all of ``Record.choices`` (else both run). ``add_bos``: see ``as_lm_eval``.
    """
    lm_eval = require("lm_eval", "eval", "the lm-eval engine")
    tasks.check_dataset(dataset)
    if mc2_only and any(len(set(tasks.mc2_indices(r))) < len(r.choices) for r in records):
        mc2_only = False  # some MC1 choices are not MC2 choices: they need the MC1 task
    manager = task_manager()
    specs = task_specs(dataset, manager, mc2_only=mc2_only)
    names = [s["task"] if isinstance(s, dict) else s for s in specs]
    lm = as_lm_eval(model, tokenizer, method, batch_size=batch_size, add_bos=add_bos)
    with tasks.provide(dataset, records):
        res = lm_eval.simple_evaluate(model=lm, tasks=specs, task_manager=manager, log_samples=True, bootstrap_iters=0)
    if res is None:
        raise DataError("lm-eval returned no results")
    per_task = {name: _per_doc(res["samples"][name]) for name in names}
    if dataset == "truthfulqa":
        out = [_truthfulqa_logliks(r, per_task) for r in records]
    else:
        out = [per_task[names[0]][r.id] for r in records]
    summary = {name: {k: v for k, v in res["results"][name].items() if k != "alias"} for name in names}
    return out, summary


def task_name(task: str) -> tuple[str, Any]:
    """``(name, TaskManager)`` for any lm-eval task: a name in lm-eval's own registry, or the path of
    a task YAML in lm-eval's format (its folder is indexed, so includes beside it resolve)."""
    require("lm_eval", "eval", "the lm-eval engine")
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(task)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise DataError(f"task file {path} does not exist; pass an lm-eval task YAML or a task name")
        try:
            cfg = load_yaml(str(path), resolve_func=False)
        except Exception as exc:  # noqa: BLE001 - yaml and lm-eval errors alike
            raise DataError(f"{path} is not an lm-eval task YAML ({type(exc).__name__}: {exc})") from exc
        name = cfg.get("task") if isinstance(cfg, dict) else None
        if not isinstance(name, str):
            raise DataError(f"{path} names no task (a `task: <name>` line); write it as lm-eval task YAMLs do")
        return name, TaskManager(include_path=[str(path.resolve().parent)], include_defaults=False)
    manager = TaskManager()  # lm-eval's whole registry
    if task not in manager.all_tasks:
        raise DataError(f"lm-eval has no task {task!r}; `lm_eval --tasks list` lists them, or pass a task YAML path")
    return task, manager


def run_task(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    *,
    method: Any = None,
    limit: int | None = None,
    batch_size: int = 8,
    add_bos: bool | None = None,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """Run any lm-eval task (``task_name``) on ``model`` edited by ``method``; lm-eval's results dict
    (``results``, ``n-shot``, ``versions``, ``configs``, per-sample ``samples``). Hub datasets need the
    hub; a local YAML can read local files (e.g. ``dataset_path: json`` with ``data_files``)."""
    lm_eval = require("lm_eval", "eval", "the lm-eval engine")
    name, manager = task_name(task)
    lm = as_lm_eval(model, tokenizer, method, batch_size=batch_size, add_bos=add_bos)
    res = lm_eval.simple_evaluate(
        model=lm, tasks=[name], task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=True
    )
    if res is None:
        raise DataError("lm-eval returned no results")
    return dict(res)


__all__ = [
    "TRUTHFULQA_TASKS",
    "run_task",
    "task_name",
    "as_lm_eval",
    "lm_eval_tasks_dir",
    "offline",
    "run",
    "task_manager",
    "task_specs",
    "truthfulqa_config",
]
