"""Labels and cells of the results tables (``hpr.study.tables``): display names of models, methods and
datasets, a number with its standard error as a Markdown cell (percent, one decimal), and the Markdown
table itself. Pure Python."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: A number in percent and its standard error in percent (None when unknown).
Cell = tuple[float, float | None]
Flips = Mapping[str, Mapping[str, Mapping[str, float]]]

MISSING = "—"
NO_RESULTS = (
    "*No results yet: run `make book` (or `hpr run`) to produce them; these tables are generated "
    "from the results files.*\n"
)
MODEL_LABELS: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct",
    "gemma3-270m": "Gemma-3-270M",
    "tiny-random": "tiny random Llama",
}
METHOD_LABELS: dict[str, str] = {
    "base": "Base",
    "lora": "LoRA",
    "diff": "Diff",
    "iti": "ITI",
    "hpr": "HPR",
    "hpr-noangle": "-AnglePred",
    "diff-mse": "Diff (MSE design)",
    "hpr-unit": "HPR (unit variant)",
}
DATASET_LABELS: dict[str, str] = {"truthfulqa": "TruthfulQA", "bbq": "BBQ", "seq": "SEQ", "toxigen": "ToxiGen"}
#: The baselines HPR is claimed to beat in Table 1.
BASELINES: tuple[str, ...] = ("base", "lora", "diff", "iti")
#: Our methods beyond the paper's Table 1, in the order they follow its rows (others after, as found).
EXTRA_ORDER: tuple[str, ...] = ("diff-mse", "iti-200", "iti-k48", "hpr-unit")
TRANSFER = "transfer"
_ITI = re.compile(r"^iti(?:-(\d+(?:\.\d+)?))?(?:-k(\d+))?$")
FLIP_COLUMNS = ("false_to_true", "true_to_false", "remains_true", "remains_false", "overall_acc", "shift_rate")
FLIP_HEADERS = (
    "False→True",
    "True→False",
    "Remains true",
    "Remains false",
    "Overall accuracy",
    "Behaviour shift rate",
)


# ------------------------------------------------------------------ labels and cells
def model_label(name: str) -> str:
    """A display name for one of our models (the name itself when unknown)."""
    return MODEL_LABELS.get(name, name)


def method_label(name: str) -> str:
    """A display name for a method: Table 1's row names, ``iti-200`` -> ``ITI (α = 200)``, ``iti-k48``
    -> ``ITI (K = 48 heads)``; the name itself when unknown."""
    if name in METHOD_LABELS:
        return METHOD_LABELS[name]
    m = _ITI.match(name)
    if m:
        parts = ([f"α = {m[1]}"] if m[1] else []) + ([f"K = {m[2]} heads"] if m[2] else [])
        return f"ITI ({', '.join(parts)})"
    return name


def flip_label(name: str) -> str:
    """Table 3's name of a method: ``iti`` -> ``ITI-15``, ``iti-200-k48`` -> ``ITI-200 (K = 48 heads)``."""
    m = _ITI.match(name)
    if not m:
        return method_label(name)
    return f"ITI-{m[1] or '15'}" + (f" (K = {m[2]} heads)" if m[2] else "")


def as_number(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def metric_cell(metric: Mapping[str, Any] | None) -> Cell | None:
    """``{"value": 0.47, "stderr": 0.041}`` (fractions) -> ``(47.0, 4.1)`` (percent)."""
    if not isinstance(metric, Mapping) or as_number(metric.get("value")) is None:
        return None
    se = as_number(metric.get("stderr"))
    return 100.0 * float(metric["value"]), None if se is None else 100.0 * se


def fmt_cell(cell: Cell | None) -> str:
    """``"47.0 ± 4.1"``, ``"47.0"`` without a standard error, ``MISSING`` without a value."""
    if cell is None:
        return MISSING
    return f"{cell[0]:.1f}" if cell[1] is None else f"{cell[0]:.1f} ± {cell[1]:.1f}"


def markdown_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    """A GitHub/MyST Markdown table (first column left-aligned, the rest right-aligned)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


__all__ = [
    "METHOD_LABELS",
    "MISSING",
    "MODEL_LABELS",
    "NO_RESULTS",
    "flip_label",
    "fmt_cell",
    "markdown_table",
    "method_label",
    "metric_cell",
    "model_label",
]
