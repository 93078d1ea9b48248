"""The book's study: the artifact store the notebooks call (``store`` and ``results``, re-exported
here: ``from hpr import study; study.get_results(...)``), the papermill runner and its profiles
(``runner``, ``profiles``, ``staleness``), sweeps over a grid (``sweep``), the book build (``book``),
plots, the rotation widget, the paper's numbers (``paper``) and the results tables in the paper's
layout (``tables``, with their ``labels`` and ``claims``)."""

from hpr.study.results import (
    collect_results,
    get_results,
    get_task_results,
    predictions,
    results_markdown,
    results_path,
    study_flips,
    write_results_markdown,
)
from hpr.study.store import (
    FLIP_METHODS,
    HPR_METHODS,
    TINY,
    Settings,
    configure,
    editors_dir,
    get_capture,
    get_editors,
    get_method,
    get_model,
    get_records,
    method_dir,
    run_dir,
    settings,
    setup,
    show,
    variant,
)

__all__ = [
    "FLIP_METHODS",
    "HPR_METHODS",
    "TINY",
    "Settings",
    "collect_results",
    "configure",
    "editors_dir",
    "get_capture",
    "get_editors",
    "get_method",
    "get_model",
    "get_records",
    "get_results",
    "get_task_results",
    "method_dir",
    "predictions",
    "results_markdown",
    "results_path",
    "run_dir",
    "settings",
    "setup",
    "show",
    "study_flips",
    "variant",
    "write_results_markdown",
]
