"""The one record type shared by every dataset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Record:
    """One multiple-choice example.

    ``prompt``: the question, or context + question (no answer formatting).
    ``choices``: answer texts. ``correct``: indices into ``choices`` of the correct ones (several
    for TruthfulQA MC2). ``best``: TruthfulQA's best answer (the MC1 target), else ``None``.
    ``mc1``: TruthfulQA's MC1 choice indices (best answer first, then the false answers), else
    ``None``. ``meta``: what analyses need (category, BBQ ambiguity, target group, source file).
    """

    id: str
    prompt: str
    choices: tuple[str, ...]
    correct: tuple[int, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    best: int | None = None
    mc1: tuple[int, ...] | None = None

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
            "meta": dict(self.meta),
        }
