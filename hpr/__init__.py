"""hpr: Householder Pseudo-Rotation activation editing (Pham & Nguyen, EMNLP 2024)."""

from __future__ import annotations

from .editor import HPR, EditorSet
from .errors import DataError, EditorError, HPRError, ModelError, ParameterError
from .kernels import angle_between, pseudo_rotate, reflect
from .records import Record

__version__ = "0.1.0"

__all__ = [
    "HPR",
    "DataError",
    "EditorError",
    "EditorSet",
    "HPRError",
    "ModelError",
    "ParameterError",
    "Record",
    "__version__",
    "angle_between",
    "pseudo_rotate",
    "reflect",
]
