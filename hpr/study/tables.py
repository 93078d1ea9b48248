"""The book's results tables in the paper's layout (Tables 1-3), ours beside the paper's numbers.

Pure Python/Markdown (no torch). Inputs are *results rows* (dicts of the results JSON files:
``model``, ``method``, ``tag``, ``train_dataset``, ``dataset``, ``split``, ``n``, ``cap``,
``cap_seed``, ``source``, ``metrics``: ``{"mc1": {"value": 0.47, "stderr": 0.041}, ...}`` with
fractions 0..1) and *flip rates* (``hpr.evaluation.metrics.flip_rates`` dicts, percent; its
``accuracy_after`` is the table's overall accuracy, ``accuracy_before`` the base model's). Our
numbers are printed in percent with one decimal; the paper's as printed (``hpr.study.paper``). Every
sentence about a claim is written from the numbers: differences in points and whether they exceed
the combined standard error ``sqrt(se1^2 + se2^2)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from hpr.study import paper
from hpr.study.claims import claim_beats_all, claim_greater, claim_similar
from hpr.study.costs import loglik_claims, loglik_table
from hpr.study.labels import (
    BASELINES,
    DATASET_LABELS,
    EXTRA_ORDER,
    FLIP_COLUMNS,
    FLIP_HEADERS,
    MISSING,
    MODEL_LABELS,
    NO_RESULTS,
    TRANSFER,
    Cell,
    Flips,
    as_number,
    flip_label,
    fmt_cell,
    markdown_table,
    method_label,
    metric_cell,
    model_label,
)
from hpr.study.paper import PAPER_MODELS, TABLE3_MODEL, paper_cell


# ------------------------------------------------------------------ selecting rows
def main_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows that belong in the tables: no ``tag``, test split (rows without ``split`` count as test)."""
    return [r for r in rows if not r.get("tag") and (r.get("split") or "test") == "test"]


def our_models(rows: Iterable[Mapping[str, Any]], flips: Flips | None = None) -> list[str]:
    """Our model names: known ones in ``MODEL_LABELS`` order, then others by first appearance."""
    seen = list(dict.fromkeys([str(r["model"]) for r in rows if r.get("model")] + list(flips or {})))
    known = [m for m in MODEL_LABELS if m in seen]
    return known + [m for m in seen if m not in known]


def _kind(r: Mapping[str, Any]) -> str:
    """``base``/``hpr``/... for per-dataset rows, ``transfer`` for editors trained on another dataset."""
    train = r.get("train_dataset") or r["dataset"]
    return TRANSFER if r["method"] != "base" and train != r["dataset"] else str(r["method"])


def find_cell(rows: Sequence[Mapping[str, Any]], model: str, dataset: str, kind: str, metric: str) -> Cell | None:
    """Our cell of ``model``/``dataset``/``kind`` (a method, or ``transfer`` = HPR trained on TruthfulQA);
    the first matching row wins."""
    for r in rows:
        if r.get("model") != model or r.get("dataset") != dataset:
            continue
        if kind == TRANSFER:
            hit = r["method"] == "hpr" and r.get("train_dataset") == "truthfulqa" and dataset != "truthfulqa"
        else:
            hit = _kind(r) == kind
        if hit and (cell := metric_cell((r.get("metrics") or {}).get(metric))) is not None:
            return cell
    return None


def _scope(rows: Sequence[Mapping[str, Any]]) -> str:
    """``"n = 149, test split, source bigbench"`` plus a cap note, from the rows' keys."""

    def uniq(key: str) -> list[str]:
        return [str(v) for v in dict.fromkeys(r.get(key) for r in rows) if v not in (None, "")]

    parts = [f"n = {'/'.join(uniq('n'))}"] if uniq("n") else []
    parts += [f"{'/'.join(uniq('split'))} split"] if uniq("split") else []
    parts += [f"source {'/'.join(uniq('source'))}"] if uniq("source") else []
    for cap, seed in dict.fromkeys((r.get("cap") or r.get("limit"), r.get("cap_seed")) for r in rows):
        if cap:
            parts.append(f"capped at {cap} examples ({'first ones' if seed is None else f'random, seed {seed}'})")
    return ", ".join(parts) if parts else "size not recorded"


def _caption_ours(rows: Sequence[Mapping[str, Any]], models: Sequence[str], datasets: Sequence[str]) -> str:
    out = []
    for model in models:
        for ds in datasets:
            sub = [r for r in rows if r.get("model") == model and r.get("dataset") == ds]
            if sub:
                name = model_label(model) + (f" {DATASET_LABELS.get(ds, ds)}" if len(datasets) > 1 else "")
                out.append(f"{name}: {_scope(sub)}")
    return "; ".join(out) if out else "no results of ours"


# ------------------------------------------------------------------ Table 1
def _extra_methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names = [
        m
        for m in dict.fromkeys(str(r["method"]) for r in rows if r.get("dataset") == "truthfulqa")
        if m not in paper.TABLE1_METHODS and m != "iti-15"
    ]
    return sorted(names, key=lambda m: (EXTRA_ORDER.index(m) if m in EXTRA_ORDER else len(EXTRA_ORDER), names.index(m)))


def _t1_cell(rows: Sequence[Mapping[str, Any]], model: str, method: str, metric: str) -> Cell | None:
    cell = find_cell(rows, model, "truthfulqa", method, metric)
    if cell is None and method == "iti":  # "iti-15" means the same method as "iti"
        cell = find_cell(rows, model, "truthfulqa", "iti-15", metric)
    return cell


def table1(rows: Sequence[Mapping[str, Any]], models: Sequence[str]) -> str:
    """Table 1 (TruthfulQA MC1/MC2, %): the paper's rows, then our extra methods; ours, then the paper's."""
    header = ["Method"] + [f"{model_label(m)} {x}" for m in models for x in ("MC1", "MC2")]
    header += [f"{m} {x} (paper)" for m in PAPER_MODELS for x in ("MC1", "MC2")]
    body = []
    for method in list(paper.TABLE1_METHODS) + _extra_methods(rows):
        row = [method_label(method)] + [fmt_cell(_t1_cell(rows, m, method, x)) for m in models for x in ("mc1", "mc2")]
        row += [paper_cell(1, pm, "truthfulqa", method, x) for pm in PAPER_MODELS for x in ("mc1", "mc2")]
        body.append(row)
    return markdown_table(header, body)


def table1_figure_data(rows: Sequence[Mapping[str, Any]], model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arguments of ``hpr.study.plots.table1_figure`` for ``model``: our cells per metric and
    method label, and the paper's values per metric, paper model and method label (percent)."""
    methods = [m for m in list(paper.TABLE1_METHODS) + _extra_methods(rows) if _t1_cell(rows, model, m, "mc1")]
    ours = {x.upper(): {method_label(m): _t1_cell(rows, model, m, x) for m in methods} for x in ("mc1", "mc2")}
    theirs: dict[str, Any] = {}
    for x in ("mc1", "mc2"):
        for pm in PAPER_MODELS:
            vals = {
                method_label(m): v[0]
                for m in methods
                if (v := paper.paper_value(1, pm, "truthfulqa", m, x)) is not None
            }
            if vals:
                theirs.setdefault(x.upper(), {})[pm] = vals
    return ours, theirs


def _table1_model_claims(rows: Sequence[Mapping[str, Any]], model: str) -> str:
    def both(fn: Callable[[str], str]) -> str:
        return f"MC1 {fn('mc1')}; MC2 {fn('mc2')}"

    def c(method: str, metric: str) -> Cell | None:
        return _t1_cell(rows, model, method, metric)

    def gt(a: str, b: str) -> str:
        return both(lambda x: claim_greater(c(a, x), c(b, x), method_label(a), method_label(b)))

    def near(a: str, b: str) -> str:
        return both(lambda x: claim_similar(c(a, x), c(b, x), method_label(a), method_label(b)))

    return (
        ". ".join(
            [
                "HPR above every baseline (Base, LoRA, Diff, ITI): "
                + both(lambda x: claim_beats_all(c("hpr", x), [(method_label(b), c(b, x)) for b in BASELINES])),
                "HPR far above Diff: " + gt("hpr", "diff"),
                "HPR above ITI: " + gt("hpr", "iti"),
                "-AnglePred close to Base: " + near("hpr-noangle", "base"),
                "LoRA close to Base: " + near("lora", "base"),
            ]
            + [
                f"Not a claim of the paper: {method_label(a)} above {method_label(b)}: " + gt(a, b)
                for a, b in (("hpr", "diff-mse"), ("diff-mse", "diff"), ("hpr-unit", "hpr"))
                if c(a, "mc1") is not None and c(b, "mc1") is not None
            ]
        )
        + "."
    )


def table1_claims(rows: Sequence[Mapping[str, Any]], models: Sequence[str]) -> str:
    """One paragraph per model on Table 1's claims."""
    return "\n\n".join(f"**{model_label(m)}.** {_table1_model_claims(rows, m)}" for m in models) + "\n"


# ------------------------------------------------------------------ Table 2
_T2_ROWS = (("base", "Base"), ("hpr", "HPR"), (TRANSFER, "HPR (TruthfulQA editors, transfer)"))


def table2(rows: Sequence[Mapping[str, Any]], models: Sequence[str]) -> str:
    """Table 2 (BBQ, SEQ, ToxiGen accuracy, %): Base, HPR, HPR transferred from TruthfulQA."""
    dsets = paper.TABLE2_DATASETS
    header = ["Method"] + [f"{model_label(m)} {DATASET_LABELS[d]}" for m in models for d in dsets]
    header += [f"{m} {DATASET_LABELS[d]} (paper)" for m in PAPER_MODELS for d in dsets]
    body = []
    for kind, label in _T2_ROWS:
        row = [label] + [fmt_cell(find_cell(rows, m, d, kind, "acc")) for m in models for d in dsets]
        row += [paper_cell(2, pm, d, kind, "acc") for pm in PAPER_MODELS for d in dsets]
        body.append(row)
    return markdown_table(header, body)


def _table2_each(rows: Sequence[Mapping[str, Any]], model: str, kind: str) -> str:
    """``"BBQ holds (...); SEQ ...; ToxiGen ..."`` for "``kind`` > Base" on each dataset."""
    name = "HPR" if kind == "hpr" else "HPR (transfer)"
    return "; ".join(
        f"{DATASET_LABELS[d]} "
        + claim_greater(find_cell(rows, model, d, kind, "acc"), find_cell(rows, model, d, "base", "acc"), name, "Base")
        for d in paper.TABLE2_DATASETS
    )


def table2_claims(rows: Sequence[Mapping[str, Any]], models: Sequence[str]) -> str:
    """One paragraph per model on "HPR > base on each dataset" (and the transferred editors)."""
    out = []
    for model in models:
        text = f"**{model_label(model)}.** HPR above Base: {_table2_each(rows, model, 'hpr')}."
        if any(find_cell(rows, model, d, TRANSFER, "acc") for d in paper.TABLE2_DATASETS):
            text += f" Not a claim of the paper: TruthfulQA editors above Base: {_table2_each(rows, model, TRANSFER)}."
        out.append(text)
    return "\n\n".join(out) + "\n"


# ------------------------------------------------------------------ Table 3
def flip_cells(flips: Mapping[str, float]) -> dict[str, Cell]:
    """Table 3's columns from a ``flip_rates`` dict (``overall_acc`` or its ``accuracy_after``), each with
    the binomial standard error ``sqrt(p (100 - p) / (n - 1))`` when ``n`` is known."""
    vals = {k: as_number(flips.get(k)) for k in FLIP_COLUMNS[:4]}
    vals["overall_acc"] = as_number(flips.get("overall_acc", flips.get("accuracy_after")))
    if vals["false_to_true"] is not None and vals["true_to_false"] is not None:
        vals["shift_rate"] = paper.behaviour_shift_rate(vals)  # type: ignore[arg-type]
    n = as_number(flips.get("n"))

    def se(p: float) -> float | None:
        return math.sqrt(max(p * (100.0 - p), 0.0) / (n - 1)) if n and n > 1 else None

    return {k: (v, se(v)) for k, v in vals.items() if v is not None}


def _base_flips(methods: Mapping[str, Mapping[str, float]]) -> dict[str, float] | None:
    for f in methods.values():
        if as_number(f.get("accuracy_before")) is not None:
            acc = float(f["accuracy_before"])
            return {"remains_true": acc, "remains_false": 100.0 - acc, "overall_acc": acc, "n": f.get("n", 0)}
    return None


def _flip_order(methods: Iterable[str]) -> list[str]:
    names = [m for m in methods if m != "base"]
    first = [m for m in ("iti", "iti-15", "iti-200", "hpr") if m in names]
    if "iti" in first and "iti-15" in first:
        first.remove("iti-15")
    return first + sorted(m for m in names if m not in first and m != "iti-15")


def _paper_flip_cell(method: str, key: str) -> str:
    if key == "shift_rate":
        v = paper.paper_flips(method).get("shift_rate")
        return MISSING if v is None else f"{v:.2f}"
    return paper_cell(3, TABLE3_MODEL, "truthfulqa", method, key)


def table3(flips: Flips) -> str:
    """Table 3 (TruthfulQA MC1 flips against the base model, % of questions): ours, then the paper's."""
    body = []
    for model, methods in flips.items():
        entries = [("Base", _base_flips(methods))] + [(flip_label(m), methods[m]) for m in _flip_order(methods)]
        for label, f in entries:
            if f is not None:
                cells = flip_cells(f)
                body.append([model_label(model), label] + [fmt_cell(cells.get(k)) for k in FLIP_COLUMNS])
    for method, label in (("base", "Base"), ("iti-15", "ITI-15"), ("iti-200", "ITI-200"), ("hpr", "HPR")):
        body.append([f"{TABLE3_MODEL} (paper)", label] + [_paper_flip_cell(method, k) for k in FLIP_COLUMNS])
    return markdown_table(["Model", "Method", *FLIP_HEADERS], body)


def table3_claims(flips: Flips) -> str:
    """One paragraph per model on Table 3's claims."""
    out = []
    for model, methods in flips.items():
        cells = {m: flip_cells(f) for m, f in methods.items()}
        iti = cells.get("iti", cells.get("iti-15", {}))
        hpr, iti200 = cells.get("hpr", {}), cells.get("iti-200", {})
        sentences = [
            "HPR flips more answers false→true than ITI-15: "
            + claim_greater(hpr.get("false_to_true"), iti.get("false_to_true"), "HPR", "ITI-15"),
            "ITI-200's behaviour shift rate far above ITI-15's: "
            + claim_greater(iti200.get("shift_rate"), iti.get("shift_rate"), "ITI-200", "ITI-15"),
            "ITI-200 below ITI-15 in overall accuracy: "
            + claim_greater(iti.get("overall_acc"), iti200.get("overall_acc"), "ITI-15", "ITI-200"),
        ]
        out.append(f"**{model_label(model)}.** " + ". ".join(sentences) + ".")
    return "\n\n".join(out) + "\n" if out else "No flip rates of ours yet.\n"


def _flip_scope(model: str, methods: Mapping[str, Mapping[str, float]], rows: Sequence[Mapping[str, Any]]) -> str:
    ns = list(dict.fromkeys(str(int(f["n"])) for f in methods.values() if as_number(f.get("n")) is not None))
    sub = [r for r in rows if r.get("model") == model and r.get("dataset") == "truthfulqa"]
    scope = _scope(sub) if sub else "test split"
    if ns:
        scope = re.sub(r"^n = [^,]*", "", scope).lstrip(", ")
        scope = f"n = {'/'.join(ns)}" + (f", {scope}" if scope else "")
    return f"{model_label(model)}: {scope}"


# ------------------------------------------------------------------ the chapter
def _cost_section(shifts: Flips | None) -> list[str]:
    shifts = {m: s for m, s in (shifts or {}).items() if s}
    if not shifts:
        return []
    return [
        "### What each edit costs in likelihood (not in the paper)",
        "*Log-likelihood of each TruthfulQA choice (nats, summed over its tokens) on the test questions "
        "of Table 1: the median under each method, and the median and 10th percentile of its change "
        "against the base model on the same choice. MC1 and MC2 compare a question's choices with one "
        "another, so an edit can raise them while making every answer far less likely; a large negative "
        "change is a cost in fluency that Table 1 does not show.*",
        loglik_table(shifts),
        loglik_claims(shifts),
    ]


def results_markdown(rows: Sequence[Mapping[str, Any]], flips: Flips, shifts: Flips | None = None) -> str:
    """The generated results chapter body: Tables 1-3 with captions and the claims they support.

    ``rows``: results rows (rows with a non-empty ``tag`` or a non-test split are left out);
    ``flips``: our model -> method -> ``hpr.evaluation.metrics.flip_rates`` dict; ``shifts`` (optional):
    our model -> method -> ``hpr.evaluation.metrics.loglik_shift`` dict, shown after Table 1.
    """
    rows = main_rows(rows)
    flips = {m: f for m, f in (flips or {}).items() if f}
    if not rows and not flips:
        return NO_RESULTS
    models = our_models(rows, flips)
    tqa_n = paper.PAPER_TRUTHFULQA_TEST_N
    missing3 = [model_label(m) for m in models if m not in flips]
    parts = [
        "## Table 1: TruthfulQA",
        f"*MC1 and MC2 (%, ± standard error). Ours: {_caption_ours(rows, models, ['truthfulqa'])}. "
        f"Paper: its {tqa_n} test questions, values as printed ({paper.CITATION}, Table 1). "
        f"{MISSING} = not measured or not reported.*",
        table1(rows, models),
        table1_claims(rows, models),
        *_cost_section(shifts),
        "## Table 2: BBQ, SEQ and ToxiGen",
        f"*Accuracy (%, ± standard error). Ours: {_caption_ours(rows, models, list(paper.TABLE2_DATASETS))}. "
        "HPR: editors trained on the same dataset; transfer: the TruthfulQA editors. "
        "Paper: tested on each dataset's validation set, values as printed (Table 2).*",
        table2(rows, models),
        table2_claims(rows, models),
        "## Table 3: flip rates",
        "*How the TruthfulQA MC1 choice changes against the base model (% of test questions, ± binomial "
        "standard error); behaviour shift rate = False→True + True→False. Ours: "
        + ("; ".join(_flip_scope(m, f, rows) for m, f in flips.items()) or "none")
        + (f" (no flip rates for {', '.join(missing3)})" if missing3 and flips else "")
        + f". Paper: {TABLE3_MODEL}, {tqa_n} test questions (Table 3).*",
        table3(flips),
        table3_claims(flips),
    ]
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


__all__ = [
    "claim_beats_all",
    "claim_greater",
    "claim_similar",
    "find_cell",
    "flip_cells",
    "main_rows",
    "our_models",
    "results_markdown",
    "table1",
    "table1_claims",
    "table1_figure_data",
    "table2",
    "table2_claims",
    "table3",
    "table3_claims",
]
