"""The paper's published numbers: claims to compare against, NOT results of this package.

Source: Van-Cuong Pham and Thien Huu Nguyen, "Householder Pseudo-Rotation: A Novel Approach to
Activation Editing in LLMs with Direction-Magnitude Perspective", EMNLP 2024 (arXiv:2409.10053).

Every value of the paper's Tables 1, 2 and 3 is in ``paper_data/tables.csv`` (shipped with the
package), copied value by value from the paper: ``table, model, dataset, method, metric, value,
stderr``; values and standard errors in percent, kept as printed. Names follow this package:
dataset ``truthfulqa``/``bbq``/``seq``/``toxigen``; method ``base``, ``lora``, ``diff``, ``iti``,
``hpr``, ``hpr-noangle`` (the paper's "-AnglePred"), and in Table 3 ``iti-15``/``iti-200`` (ITI with
alpha = 15 and 200); metric ``mc1``/``mc2`` (Table 1), ``acc`` (Table 2), ``false_to_true``,
``true_to_false``, ``remains_true``, ``remains_false``, ``overall_acc`` (Table 3).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from hpr.errors import DataError, ParameterError

CITATION = (
    "Pham & Nguyen, Householder Pseudo-Rotation: A Novel Approach to Activation Editing in LLMs "
    "with Direction-Magnitude Perspective, EMNLP 2024 (arXiv:2409.10053)"
)

#: The paper's three models, in the order of its tables.
PAPER_MODELS: tuple[str, ...] = ("Llama-2-7B-Chat", "Llama-3-8B-Instruct", "Mistral-7B-Instruct")
#: The paper's tables held in the CSV.
PAPER_TABLES: tuple[str, ...] = ("Table 1", "Table 2", "Table 3")
#: Rows of Table 1 in the paper's order (package method names).
TABLE1_METHODS: tuple[str, ...] = ("base", "lora", "diff", "iti", "hpr", "hpr-noangle")
#: Datasets of Table 2 in the paper's order.
TABLE2_DATASETS: tuple[str, ...] = ("bbq", "seq", "toxigen")
#: Rows of Table 3 in the paper's order (ITI with alpha 15 and 200, HPR; "base" has no flips).
TABLE3_METHODS: tuple[str, ...] = ("iti-15", "iti-200", "hpr")
#: Table 3 is measured on this model, on TruthfulQA MC1 (flips of the MC1 choice against the base model).
TABLE3_MODEL = "Llama-2-7B-Chat"
#: Table 3's metrics, in the paper's column order (percent of test questions).
FLIP_METRICS: tuple[str, ...] = ("false_to_true", "true_to_false", "remains_true", "remains_false", "overall_acc")
#: The two flips whose sum the paper calls the "behavior shift rate".
SHIFT_PARTS: tuple[str, str] = ("false_to_true", "true_to_false")
#: Models the paper reports ITI for (the ITI code supports Llama only; Mistral has no ITI row).
ITI_MODELS: tuple[str, ...] = ("Llama-2-7B-Chat", "Llama-3-8B-Instruct")
#: Questions in the paper's TruthfulQA test split (the authors' ``ids_splits.json``; scores are counts of these).
PAPER_TRUTHFULQA_TEST_N = 409
#: Hyper-parameters of the authors' public code (the printed paper lost its numeric values).
PAPER_HYPERPARAMETERS: Mapping[str, object] = {
    "k": 5,
    "batch_size": 16,
    "learning_rate": 5e-4,
    "epochs": 5,
    "optimizer": "AdamW (cosine schedule, warmup)",
    "angle_network_layers": 4,
}

_COLUMNS = ("table", "model", "dataset", "method", "metric", "value", "stderr")


@dataclass(frozen=True)
class PaperRow:
    """One printed number: ``value`` and ``stderr`` in percent; ``*_text`` as printed in the paper."""

    table: str
    model: str
    dataset: str
    method: str
    metric: str
    value: float
    stderr: float | None
    value_text: str
    stderr_text: str | None


def _parse(text: str, where: str) -> tuple[PaperRow, ...]:
    """Rows of the CSV ``text``; ``where`` names the file in errors."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != _COLUMNS:
        raise DataError(
            f"{where} has columns {reader.fieldnames}, expected {list(_COLUMNS)}; restore it from the paper's tables"
        )
    rows = []
    for i, rec in enumerate(reader, start=2):
        try:
            value = float(rec["value"])
            se_text = (rec["stderr"] or "").strip() or None
            stderr = float(se_text) if se_text is not None else None
        except ValueError as exc:
            raise DataError(f"{where} line {i}: a value is not a number ({exc}); fix that line") from None
        rows.append(
            PaperRow(
                rec["table"],
                rec["model"],
                rec["dataset"],
                rec["method"],
                rec["metric"],
                value,
                stderr,
                rec["value"].strip(),
                se_text,
            )
        )
    return tuple(rows)


@cache
def paper_rows() -> tuple[PaperRow, ...]:
    """Every value of the paper's Tables 1-3 (read once from the package's ``paper_data/tables.csv``)."""
    path = resources.files("hpr.study") / "paper_data" / "tables.csv"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(
            "hpr/study/paper_data/tables.csv is missing; reinstall the package (it ships the file)"
        ) from None
    return _parse(text, "hpr/study/paper_data/tables.csv")


@cache
def _index() -> dict[tuple[str, str, str, str, str], PaperRow]:
    return {(r.table, r.model, r.dataset, r.method, r.metric): r for r in paper_rows()}


def _table_name(table: int | str) -> str:
    name = f"Table {table}" if isinstance(table, int) or str(table).isdigit() else str(table)
    if name not in PAPER_TABLES:
        raise ParameterError(f"the paper has no {name!r} here; use one of 1, 2, 3 (or {', '.join(PAPER_TABLES)})")
    return name


def paper_row(table: int | str, model: str, dataset: str, method: str, metric: str) -> PaperRow | None:
    """The printed cell, or None where the paper prints none (e.g. ITI on Mistral)."""
    name = _table_name(table)
    if model not in PAPER_MODELS:
        raise ParameterError(f"unknown paper model {model!r}; use one of {', '.join(PAPER_MODELS)}")
    return _index().get((name, model, dataset, method, metric))


def paper_value(
    table: int | str, model: str, dataset: str, method: str, metric: str
) -> tuple[float, float | None] | None:
    """``(value, stderr)`` in percent (stderr None where the paper prints none), or None if no such cell.

    ``table``: 1, 2, 3 or "Table 1"...; ``model`` one of ``PAPER_MODELS``; the rest as in the CSV.
    """
    row = paper_row(table, model, dataset, method, metric)
    return None if row is None else (row.value, row.stderr)


def paper_cell(table: int | str, model: str, dataset: str, method: str, metric: str, missing: str = "—") -> str:
    """The cell as printed in the paper: ``"51.83 ± 2.47"``, ``"38.38"``, or ``missing``."""
    row = paper_row(table, model, dataset, method, metric)
    if row is None:
        return missing
    return row.value_text if row.stderr_text is None else f"{row.value_text} ± {row.stderr_text}"


def behaviour_shift_rate(flips: Mapping[str, float]) -> float:
    """The paper's "behavior shift rate": false->true + true->false, in percent of questions."""
    try:
        return float(flips[SHIFT_PARTS[0]]) + float(flips[SHIFT_PARTS[1]])
    except KeyError as exc:
        raise DataError(
            f"flip rates lack {exc.args[0]!r}; pass the dict of hpr.evaluation.metrics.flip_rates"
        ) from None


def paper_flips(method: str) -> dict[str, float]:
    """Table 3's row of ``method`` (``base``, ``iti-15``, ``iti-200``, ``hpr``) in percent; the base row
    holds only ``remains_true``, ``remains_false`` and ``overall_acc``; ``shift_rate`` is added where
    both flips are printed (ITI-15: 8.56, ITI-200: 34.23)."""
    out = {
        r.metric: r.value
        for r in paper_rows()
        if r.table == "Table 3" and r.model == TABLE3_MODEL and r.method == method
    }
    if not out:
        raise ParameterError(f"Table 3 has no row {method!r}; use base, {', '.join(TABLE3_METHODS)}")
    if all(k in out for k in SHIFT_PARTS):
        out["shift_rate"] = round(behaviour_shift_rate(out), 10)
    return out


def combined_stderr(a: float | None, b: float | None) -> float | None:
    """``sqrt(a^2 + b^2)``, the standard error of a difference of two independent estimates."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    return math.hypot(a, b)


__all__ = [
    "CITATION",
    "FLIP_METRICS",
    "ITI_MODELS",
    "PAPER_HYPERPARAMETERS",
    "PAPER_MODELS",
    "PAPER_TABLES",
    "PAPER_TRUTHFULQA_TEST_N",
    "SHIFT_PARTS",
    "TABLE1_METHODS",
    "TABLE2_DATASETS",
    "TABLE3_METHODS",
    "TABLE3_MODEL",
    "PaperRow",
    "behaviour_shift_rate",
    "combined_stderr",
    "paper_cell",
    "paper_flips",
    "paper_row",
    "paper_rows",
    "paper_value",
]
