"""The book's study: the artifact store the notebooks call (``store``, re-exported here: ``from hpr
import study; study.get_results(...)``), the papermill runner and its profiles (``runner``,
``profiles``, ``staleness``), the book build (``book``), plots, the rotation widget, the paper's
numbers (``paper``) and the results tables in the paper's layout (``tables``)."""

from hpr.study.store import (
    FLIP_METHODS,
    HPR_METHODS,
    TINY,
    Settings,
    collect_results,
    configure,
    editors_dir,
    get_capture,
    get_editors,
    get_method,
    get_model,
    get_records,
    get_results,
    method_dir,
    predictions,
    results_markdown,
    results_path,
    run_dir,
    settings,
    setup,
    show,
    study_flips,
    variant,
    write_results_markdown,
)

__all__ = ["FLIP_METHODS", "HPR_METHODS", "TINY", "Settings", "collect_results", "configure", "editors_dir",
           "get_capture", "get_editors", "get_method", "get_model", "get_records", "get_results", "method_dir",
           "predictions", "results_markdown", "results_path", "run_dir", "settings", "setup", "show", "study_flips",
           "variant", "write_results_markdown"]
