"""User-facing errors: every message names the problem and the fix."""

from __future__ import annotations


class HPRError(Exception):
    """Base class of every error this package raises on bad input.

    Messages are written for the person running the code: what is wrong, and what to do.
    """


class ModelError(HPRError):
    """A model spec, checkpoint or architecture that cannot be used."""


class DataError(HPRError):
    """A dataset, data directory or data file that cannot be used."""


class EditorError(HPRError):
    """An editor directory, config or weights file that cannot be used."""


class ParameterError(HPRError):
    """A parameter, profile or option with a wrong name, type or value."""
