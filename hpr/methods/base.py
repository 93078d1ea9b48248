"""What every editing method shares: the ``EditMethod`` protocol, the unedited model, and the
saved-method format (a directory with ``config.json``: format, method name, model fingerprint,
options; weights as safetensors; nothing pickled).

The baselines (``hpr.methods.iti``, ``diff``, ``lora``) import this module and the layers below
it (``hpr.lm``, ``hpr.data``, the top-level modules), never the registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from hpr import _files
from hpr.errors import EditorError
from hpr.lm.architectures import fingerprint, same_model

CONFIG_FILE = "config.json"
METHOD_FORMAT = "hpr-method/1"


@runtime_checkable
class EditMethod(Protocol):
    """What the notebooks and the evaluation loop need from a method: ``with m.apply(model): ...``
    edits ``model`` inside the block (every hook removed on exit), ``m.save(dir)`` writes it."""

    def apply(self, model: nn.Module) -> AbstractContextManager[nn.Module]: ...

    def save(self, directory: str | Path) -> Path: ...


class Unedited:
    """The model as it is (method ``base``): ``apply`` changes nothing."""

    name = "base"

    @contextmanager
    def apply(self, model: nn.Module, check: bool = True) -> Iterator[nn.Module]:
        yield model

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        _files.write_json(out / CONFIG_FILE, {"format": METHOD_FORMAT, "method": "base"})
        return out

    @classmethod
    def load(cls, directory: str | Path | None = None, model: Any = None) -> Unedited:
        return cls()


def read_method_config(directory: str | Path, method: str, also: Sequence[str] = ()) -> dict[str, Any]:
    """Read ``directory/config.json`` of a saved ``method`` (or one of ``also``); ``EditorError``
    if unusable."""
    d = Path(directory)
    path = d / CONFIG_FILE
    if not path.is_file():
        raise EditorError(
            f"{path} is missing; {d} is not a saved {method} method. "
            f"Train it with `hpr train --method {method} --out {d}`"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EditorError(f"{path} is not valid JSON ({exc}); train the {method} method again") from exc
    if not isinstance(cfg, dict) or cfg.get("method") not in (method, *also):
        found = cfg.get("method") if isinstance(cfg, dict) else None
        raise EditorError(
            f"{path} describes method {found!r}, not {method!r}; load it with "
            f"load_method({found!r}, ...) or point to a {method} directory"
        )
    if not isinstance(cfg.get("model"), dict):
        raise EditorError(f"{path} has no model fingerprint ('model' object); train it again")
    return cfg


def check_fingerprint(saved: dict[str, Any], model: nn.Module, method: str) -> None:
    """Refuse ``model`` unless its fingerprint matches the one ``method`` was fitted on."""
    fp = fingerprint(model, saved.get("name"))
    if not same_model(fp, saved):
        raise EditorError(
            f"this {method} method was fitted on {saved} but the model is {fp}; "
            f"fit it for this model (hpr train --method {method} --model ...)"
        )


__all__ = ["CONFIG_FILE", "METHOD_FORMAT", "EditMethod", "Unedited", "check_fingerprint", "read_method_config"]
