"""lm-evaluation-harness integration: an edited model as an lm-eval ``LM``, and our tasks.

``as_lm_eval(model, tokenizer, method)`` wraps a loaded model as lm-eval's ``HFLM`` whose every
forward pass runs inside ``method.apply(model)``; ``task_manager()`` knows the task YAMLs
shipped in ``hpr/tasks`` (``hpr.tasks.TASKS``). So::

    lm = as_lm_eval(model, tok, editors)
    lm_eval.simple_evaluate(model=lm, tasks=["hpr_truthfulqa_mc1"], task_manager=task_manager())

scores the edited model on our records without the hub. ``run(...)`` does that for a list of
records and returns per-record, per-choice log-likelihoods in ``Record.choices`` order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from . import tasks
from .errors import DataError
from .records import Record


def offline() -> None:
    """Tell the hub clients not to wait on the network (we never use the hub here)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def as_lm_eval(model: nn.Module, tokenizer: Any, method: Any = None, batch_size: int = 8) -> Any:
    """An lm-eval ``HFLM`` over ``model`` whose forward passes are edited by ``method``.

    ``method``: anything with an ``apply(model)`` context manager (``hpr.EditorSet``, the
    baselines); ``None`` scores the model as is.
    """
    offline()
    from lm_eval.models.huggingface import HFLM

    class EditedHFLM(HFLM):  # type: ignore[misc]
        """HFLM that runs every model call inside ``method.apply(model)``."""

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
    return EditedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def task_manager(metadata: dict[str, Any] | None = None) -> Any:
    """An lm-eval ``TaskManager`` that also knows the tasks in ``hpr/tasks``."""
    offline()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks.TASKS_DIR), metadata=metadata)


def _per_doc(samples: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    out = {}
    for s in samples:
        out[str(s["doc"]["id"])] = [float(r[0]) for r in s["filtered_resps"]]
    return out


def run(
    model: nn.Module,
    tokenizer: Any,
    dataset: str,
    records: Sequence[Record],
    *,
    method: Any = None,
    batch_size: int = 8,
    mc2_only: bool = False,
) -> tuple[list[list[float]], dict[str, Any]]:
    """Score ``records`` with lm-eval: per-record log-likelihoods over ``Record.choices``.

    Returns ``(logliks, lm_eval_results)``; the second holds lm-eval's own aggregated metrics
    per task. For TruthfulQA the MC1 choices' log-likelihoods come from the MC1 task and the
    others from the MC2 task (they score the same strings); ``mc2_only`` runs only the MC2 task,
    whose choices include MC1's, at half the cost.
    """
    import lm_eval

    tasks.check_dataset(dataset)
    names = list(tasks.TASKS[dataset])
    if mc2_only and dataset == "truthfulqa":
        names = ["hpr_truthfulqa_mc2"]
    lm = as_lm_eval(model, tokenizer, method, batch_size=batch_size)
    with tasks.provide(dataset, records):
        res = lm_eval.simple_evaluate(
            model=lm, tasks=names, task_manager=task_manager(), log_samples=True, bootstrap_iters=0
        )
    if res is None:
        raise DataError("lm-eval returned no results")
    per_task = {name: _per_doc(res["samples"][name]) for name in names}
    out = []
    for r in records:
        if dataset == "truthfulqa":
            ll = list(per_task["hpr_truthfulqa_mc2"][r.id])
            assert r.mc1 is not None
            for pos, i in enumerate(r.mc1 if "hpr_truthfulqa_mc1" in per_task else ()):
                ll[i] = per_task["hpr_truthfulqa_mc1"][r.id][pos]
        else:
            ll = per_task[names[0]][r.id]
        out.append(ll)
    summary = {name: {k: v for k, v in res["results"][name].items() if k != "alias"} for name in names}
    return out, summary


__all__ = ["as_lm_eval", "offline", "run", "task_manager"]
