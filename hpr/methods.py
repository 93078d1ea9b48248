"""One interface for every editing method: HPR, its ablation, and the baselines.

A method is applied with ``with method.apply(model): ...`` (the edit is removed on exit, also
on exceptions), saved with ``save(dir)`` and loaded with ``Method.load(dir, model=...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class EditMethod(Protocol):
    """What notebooks and the evaluation loop need from a method."""

    def apply(self, model: nn.Module) -> AbstractContextManager[nn.Module]: ...

    def save(self, directory: str | Path) -> Path: ...


class Base:
    """The unedited model: the identity method."""

    name = "base"

    @contextmanager
    def apply(self, model: nn.Module, check: bool = True) -> Iterator[nn.Module]:
        yield model

    def save(self, directory: str | Path) -> Path:
        from . import io

        out = Path(directory)
        io.write_json(out / "config.json", {"format": "hpr-method/1", "method": "base"})
        return out

    @classmethod
    def load(cls, directory: str | Path, model: Any = None) -> Base:
        return cls()
