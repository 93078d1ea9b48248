"""Scoring requests for our datasets, and the hooks of the lm-eval task YAMLs in this folder.

Both engines (native ``hpr.evaluation.scoring`` and lm-eval) score the same strings: the context
``hpr.data.prompts.context`` builds (the one place prompts are made), then each choice as the
continuation ``" " + choice`` (lm-eval's default target delimiter). For TruthfulQA MC1 scores the
``Record.mc1`` choices (best answer first) and MC2 the ``Record.mc2`` choices; for the BIG-bench
tasks the continuations are ``Record.choices`` in file order, as lm-eval's ``multiple_choice_targets``
(accuracy: the highest-likelihood choice is correct).

TruthfulQA runs through lm-eval's own ``truthfulqa_mc1`` / ``truthfulqa_mc2`` task configs (prompt,
choices and ``process_results`` are lm-eval's; ``hpr.evaluation.lmeval.truthfulqa_config``) with our
records as documents in the hub's ``truthful_qa`` row layout (``truthfulqa_doc``). The task YAMLs here
(``hpr_toxigen``, ``hpr_bbq``, ``hpr_seq``) read records through ``load_docs``: records handed over
with ``provide`` (what ``hpr.evaluation.lmeval`` does), else ``hpr.data.load_split`` with the task
metadata keys ``hpr_split``, ``hpr_data_dir``, ``hpr_source``, ``hpr_seed`` (default: test split,
bundled data).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpr.data.prompts import TOXIGEN_PROMPT, TQA_PRIMER, context
from hpr.data.records import DATASETS, Record, check_dataset
from hpr.errors import DataError
from hpr.evaluation.scoring import Request

TASKS_DIR = Path(__file__).resolve().parent

#: lm-eval task names per dataset.
TASKS: dict[str, tuple[str, ...]] = {
    "truthfulqa": ("hpr_truthfulqa_mc1", "hpr_truthfulqa_mc2"),
    "toxigen": ("hpr_toxigen",),
    "bbq": ("hpr_bbq",),
    "seq": ("hpr_seq",),
}
DELIMITER = " "


def request(dataset: str, record: Record) -> Request:
    """The scoring request of ``record``: every choice of ``record.choices``, in order."""
    if not record.choices:
        raise DataError(f"record {record.id!r} of {dataset} has no choices")
    return Request(record.id, context(dataset, record), tuple(DELIMITER + c for c in record.choices))


# ---- lm-eval hooks -------------------------------------------------------------------------

_PROVIDED: dict[str, list[Record]] = {}


@contextmanager
def provide(dataset: str, records: Sequence[Record]) -> Iterator[None]:
    """Make ``load_docs`` return ``records`` for ``dataset`` inside the block."""
    check_dataset(dataset)
    old = _PROVIDED.get(dataset)
    _PROVIDED[dataset] = list(records)
    try:
        yield
    finally:
        if old is None:
            _PROVIDED.pop(dataset, None)
        else:
            _PROVIDED[dataset] = old


#: The split our TruthfulQA documents go under: the hub's ``truthful_qa`` has only ``validation``,
#: which lm-eval's ``truthfulqa_mc1``/``truthfulqa_mc2`` read.
TQA_SPLIT = "validation"


def mc2_indices(record: Record) -> tuple[int, ...]:
    """Indices into ``record.choices`` of TruthfulQA's MC2 choices (``Record.mc2``; all if unset)."""
    mc2 = getattr(record, "mc2", None)
    return tuple(range(len(record.choices))) if mc2 is None else tuple(mc2)


def truthfulqa_doc(record: Record) -> dict[str, Any]:
    """A row in the hub's ``truthful_qa``/``multiple_choice`` layout (plus our ``id``).

    ``mc1_targets``: the ``Record.mc1`` choices, best answer first (labels ``[1, 0, ...]``);
    ``mc2_targets``: the MC2 choices (``mc2_indices``), label 1 for those in ``Record.correct``.
    """
    if record.mc1 is None:
        raise DataError(f"TruthfulQA record {record.id!r} has no mc1 choices; rebuild the data")
    good = set(record.correct)
    mc1, mc2 = list(record.mc1), mc2_indices(record)
    mc1_labels = [int(k == 0) for k in range(len(mc1))]
    return {
        "id": record.id,
        "question": record.prompt,
        "mc1_targets": {"choices": [record.choices[i] for i in mc1], "labels": mc1_labels},
        "mc2_targets": {"choices": [record.choices[i] for i in mc2], "labels": [int(i in good) for i in mc2]},
    }


def to_doc(dataset: str, record: Record) -> dict[str, Any]:
    """An lm-eval document: TruthfulQA's hub layout (``truthfulqa_doc``), else our context,
    choices and gold indices (read by ``doc_to_text``/``doc_to_choice``/``doc_to_target``)."""
    if dataset == "truthfulqa":
        return truthfulqa_doc(record)
    return {
        "id": record.id,
        "context": context(dataset, record),
        "choices": list(record.choices),
        "gold": list(record.correct),
    }


def load_docs(hpr_dataset: str = "truthfulqa", **meta: Any) -> dict[str, Any]:
    """lm-eval ``custom_dataset`` hook: ``{split: datasets.Dataset}`` of our records.

    The split is ``"test"`` (our task YAMLs), or ``TQA_SPLIT`` for TruthfulQA (lm-eval's own tasks).
    """
    import datasets

    check_dataset(hpr_dataset)
    records = _PROVIDED.get(hpr_dataset)
    if records is None:
        from hpr.data import datasets as data

        records = data.load_split(
            hpr_dataset,
            str(meta.get("hpr_split", "test")),
            source=meta.get("hpr_source"),
            data_dir=meta.get("hpr_data_dir"),
            seed=int(meta.get("hpr_seed", 0)),
        )
    split = TQA_SPLIT if hpr_dataset == "truthfulqa" else "test"
    return {split: datasets.Dataset.from_list([to_doc(hpr_dataset, r) for r in records])}


def doc_to_text(doc: dict[str, Any]) -> str:
    return str(doc["context"])


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return list(doc["choices"])


def doc_to_target(doc: dict[str, Any]) -> Any:
    gold = list(doc["gold"])
    return gold[0] if len(gold) == 1 else gold


__all__ = [
    "DATASETS",
    "TASKS",
    "TASKS_DIR",
    "TOXIGEN_PROMPT",
    "TQA_PRIMER",
    "TQA_SPLIT",
    "check_dataset",
    "context",
    "load_docs",
    "mc2_indices",
    "provide",
    "request",
    "to_doc",
    "truthfulqa_doc",
]
