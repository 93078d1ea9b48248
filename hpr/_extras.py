"""Optional dependencies: ``require`` imports one, or says which extra of ``hpr`` installs it.

The core (``pip install hpr``) is what editing a model needs: torch, transformers, safetensors,
accelerate. The extras: ``gguf`` (the embedded GGUF models), ``baselines`` (ITI's probes, LoRA),
``eval`` (lm-evaluation-harness), ``book`` (the notebooks, the runner, plots, the Jupyter Book),
``cluster`` (``hpr sweep`` on Slurm through submitit), ``all`` (everything).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hpr.errors import HPRError


class MissingExtra(HPRError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise ``MissingExtra`` naming ``pip install 'hpr[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{what} needs the Python package {module.split('.')[0]!r}, which is not installed "
            f"({exc}); install it with `pip install 'hpr[{extra}]'` (or 'hpr[all]')"
        ) from exc


__all__ = ["MissingExtra", "require"]
