"""The one record type shared by every dataset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Record:
    """One multiple-choice example.

    ``id``: ``"<dataset>-<key>"`` (the prefix names the dataset, see ``dataset_of``).
    ``prompt``: the question, or context + question, without answer formatting (for ToxiGen the
    wrapped question lm-eval scores; for BIG-bench tasks the file's ``input`` verbatim, whitespace
    kept, since BIG-bench's formatting depends on it). ``choices``: answer texts in file order.
    ``correct``: indices into ``choices`` of the correct ones (several for TruthfulQA MC2).
    ``best``: TruthfulQA's best answer (the MC1 target), else ``None``. ``mc1``: TruthfulQA's MC1
    choice indices (best answer first, then MC1's incorrect answers), else ``None``. ``mc2``:
    TruthfulQA's MC2 choice indices (``mc2_targets``: true then false answers), else ``None``;
    ``choices`` may hold the union of both sets. ``meta``: what analyses need (category, BBQ
    ambiguity and subtask, target group, source file; ``inputs`` = a hub row's already formatted
    BIG-bench prompt, used verbatim as the scoring context).
    """

    id: str
    prompt: str
    choices: tuple[str, ...]
    correct: tuple[int, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    best: int | None = None
    mc1: tuple[int, ...] | None = None
    mc2: tuple[int, ...] | None = None

    @property
    def incorrect(self) -> tuple[int, ...]:
        """Indices of the incorrect choices."""
        good = set(self.correct)
        return tuple(i for i in range(len(self.choices)) if i not in good)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "choices": list(self.choices),
            "correct": list(self.correct),
            "best": self.best,
            "mc1": list(self.mc1) if self.mc1 is not None else None,
            "mc2": list(self.mc2) if self.mc2 is not None else None,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Record:
        """Inverse of ``to_dict``; ``best``, ``mc1``, ``mc2`` and ``meta`` are optional.
        KeyError/TypeError when ``id``, ``prompt``, ``choices`` or ``correct`` is missing or wrong."""

        def ints(x: Any) -> tuple[int, ...] | None:
            return None if x is None else tuple(int(i) for i in x)

        return cls(
            str(d["id"]),
            str(d["prompt"]),
            tuple(str(c) for c in d["choices"]),
            tuple(int(i) for i in d["correct"]),
            dict(d.get("meta") or {}),
            None if d.get("best") is None else int(d["best"]),
            ints(d.get("mc1")),
            ints(d.get("mc2")),
        )


#: The datasets of the study, in the order of the paper's tables.
DATASETS: tuple[str, ...] = ("truthfulqa", "bbq", "seq", "toxigen")


def check_dataset(dataset: str) -> str:
    """``dataset`` if it is one of ``DATASETS``; ``ParameterError`` naming the valid ones otherwise."""
    from hpr.errors import ParameterError

    if dataset not in DATASETS:
        raise ParameterError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return dataset


def dataset_of(record: Record) -> str:
    """The dataset a record belongs to: ``meta["dataset"]`` if set, else the id's prefix before ``-``."""
    name = record.meta.get("dataset") if isinstance(record.meta, Mapping) else None
    return str(name) if name else record.id.split("-", 1)[0]
