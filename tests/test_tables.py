"""The book's results tables (hpr.study.tables): cells, layout, claims, captions, from synthetic rows."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from hpr.evaluation.metrics import flip_rates
from hpr.study import paper, tables

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"
TQA_MC1 = {
    "base": 0.248,
    "lora": 0.268,
    "diff": 0.423,
    "iti": 0.329,
    "hpr": 0.470,
    "hpr-noangle": 0.260,
    "diff-mse": 0.300,
    "iti-200": 0.396,
    "iti-k48": 0.310,
    "hpr-unit": 0.450,
}


def row(model: str, method: str, dataset: str, metrics: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = {
        "model": model,
        "method": method,
        "tag": "",
        "train_dataset": dataset,
        "dataset": dataset,
        "split": "test",
        "n": 149 if dataset == "truthfulqa" else 300,
        "cap": None,
        "cap_seed": None,
        "seed": 0,
        "k": 5,
        "source": "bigbench",
        "metrics": metrics,
    }
    return {**r, **kw}


def m(value: float, stderr: float = 0.036) -> dict[str, float]:
    return {"value": value, "stderr": stderr}


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    out = [row(SMOL, meth, "truthfulqa", {"mc1": m(v), "mc2": m(v + 0.2, 0.035)}) for meth, v in TQA_MC1.items()]
    out.append(row(GEMMA, "hpr", "truthfulqa", {"mc1": m(0.356, 0.039)}))  # Gemma: no MC2, no baselines
    for ds, base, hpr, transfer in [
        ("bbq", 0.207, 0.350, 0.250),
        ("seq", 0.217, 0.348, 0.200),
        ("toxigen", 0.431, 0.438, 0.440),
    ]:
        kw = {"cap": 300, "cap_seed": 0}
        out.append(row(SMOL, "base", ds, {"acc": m(base, 0.03)}, **kw))
        out.append(row(SMOL, "hpr", ds, {"acc": m(hpr, 0.03)}, **kw))
        out.append(row(SMOL, "hpr", ds, {"acc": m(transfer, 0.03)}, train_dataset="truthfulqa", **kw))
    out.append(row(SMOL, "hpr", "truthfulqa", {"mc1": m(0.99)}, tag="k-sweep"))  # tagged: not in the tables
    out.append(row(SMOL, "lora", "truthfulqa", {"mc1": m(0.99)}, split="val"))  # not the test split
    return out


def preds(correct: list[bool]) -> list[dict[str, Any]]:
    return [{"id": str(i), "correct": c} for i, c in enumerate(correct)]


@pytest.fixture
def flips() -> dict[str, dict[str, dict[str, float]]]:
    """Flip rates made by hpr.evaluation.metrics.flip_rates on 10 questions (base gets 3 right)."""
    base = preds([True] * 3 + [False] * 7)
    runs = {
        "iti": [True, True, True, True, False, False, False, False, False, False],  # +1, 0 lost
        "iti-200": [True, False, False, True, True, True, True, False, False, False],  # +4, -2
        "hpr": [True, True, False, True, True, True, True, True, False, False],
    }  # +5, -1
    return {SMOL: {meth: flip_rates(base, preds(after)) for meth, after in runs.items()}}


def table_rows(md: str, first: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith(f"| {first} |")
    ]


def test_cells_and_labels() -> None:
    assert tables.fmt_cell(tables.metric_cell({"value": 0.47, "stderr": 0.041})) == "47.0 ± 4.1"
    assert tables.fmt_cell(tables.metric_cell({"value": 0.47, "stderr": float("nan")})) == "47.0"
    assert tables.fmt_cell(tables.metric_cell(None)) == "—"
    assert tables.model_label(SMOL) == "SmolLM2-135M-Instruct"
    assert tables.model_label("my-model") == "my-model"
    assert tables.method_label("hpr-noangle") == "-AnglePred"
    assert tables.method_label("iti-200-k48") == "ITI (α = 200, K = 48 heads)"
    assert tables.flip_label("iti") == tables.flip_label("iti-15") == "ITI-15"
    assert tables.flip_label("iti-k48") == "ITI-15 (K = 48 heads)"


def test_table1_layout_and_cells(rows: list[dict[str, Any]]) -> None:
    md = tables.table1(tables.main_rows(rows), [SMOL, GEMMA])
    lines = md.splitlines()
    assert lines[0].startswith("| Method | SmolLM2-135M-Instruct MC1 | SmolLM2-135M-Instruct MC2 | Gemma-3-270M MC1 |")
    assert lines[0].endswith("| Mistral-7B-Instruct MC1 (paper) | Mistral-7B-Instruct MC2 (paper) |")
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels == [
        "Base",
        "LoRA",
        "Diff",
        "ITI",
        "HPR",
        "-AnglePred",
        "Diff (MSE design)",
        "ITI (α = 200)",
        "ITI (K = 48 heads)",
        "HPR (unit variant)",
    ]
    assert table_rows(md, "HPR")[0] == [
        "HPR",
        "47.0 ± 3.6",
        "67.0 ± 3.5",
        "35.6 ± 3.9",
        "—",
        "51.83 ± 2.47",
        "70.95 ± 2.12",
        "52.32 ± 2.47",
        "71.70 ± 2.13",
        "55.01 ± 2.46",
        "72.14 ± 2.07",
    ]
    assert table_rows(md, "LoRA")[0][1:4] == ["26.8 ± 3.6", "46.8 ± 3.5", "—"]  # the val-split row is ignored
    assert table_rows(md, "ITI")[0][-2:] == ["—", "—"]  # the paper has no ITI on Mistral
    assert table_rows(md, "-AnglePred")[0][7] == "35.94 ± 2.375"
    assert table_rows(md, "ITI (α = 200)")[0][1:] == ["39.6 ± 3.6", "59.6 ± 3.5"] + ["—"] * 8


def test_table2_rows(rows: list[dict[str, Any]]) -> None:
    md = tables.table2(tables.main_rows(rows), [SMOL, GEMMA])
    assert table_rows(md, "Base")[0] == [
        "Base",
        "20.7 ± 3.0",
        "21.7 ± 3.0",
        "43.1 ± 3.0",
        "—",
        "—",
        "—",
        "33.27",
        "21.74",
        "51.38",
        "60.44",
        "47.83",
        "45.32",
        "61.62",
        "69.57",
        "55.00",
    ]
    assert table_rows(md, "HPR")[0][1:4] == ["35.0 ± 3.0", "34.8 ± 3.0", "43.8 ± 3.0"]
    transfer = table_rows(md, "HPR (TruthfulQA editors, transfer)")[0]
    assert transfer[1:4] == ["25.0 ± 3.0", "20.0 ± 3.0", "44.0 ± 3.0"]
    assert transfer[4:] == ["—"] * 12


def test_table3_rows(flips: dict[str, dict[str, dict[str, float]]]) -> None:
    md = tables.table3(flips)
    smol = table_rows(md, "SmolLM2-135M-Instruct")
    assert [r[1] for r in smol] == ["Base", "ITI-15", "ITI-200", "HPR"]
    assert smol[0][2:] == ["—", "—", "30.0 ± 15.3", "70.0 ± 15.3", "30.0 ± 15.3", "—"]
    # ITI-200: 4 of 10 false->true, 2 true->false, shift 60 %; se = sqrt(p (100 - p) / (n - 1))
    assert smol[2][2:] == ["40.0 ± 16.3", "20.0 ± 13.3", "10.0 ± 10.0", "30.0 ± 15.3", "50.0 ± 16.7", "60.0 ± 16.3"]
    paper_rows = table_rows(md, "Llama-2-7B-Chat (paper)")
    assert paper_rows[0][1:] == ["Base", "—", "—", "29.58", "70.42", "29.58", "—"]
    assert paper_rows[1][1:] == ["ITI-15", "6.36", "2.20", "27.38", "64.06", "33.74", "8.56"]
    assert paper_rows[2][-1] == "34.23"


def test_claims_are_written_from_the_numbers(
    rows: list[dict[str, Any]], flips: dict[str, dict[str, dict[str, float]]]
) -> None:
    t1 = tables.table1_claims(tables.main_rows(rows), [SMOL, GEMMA])
    smol, gemma = t1.split("\n\n")
    # Diff is 4.7 points below HPR, inside sqrt(3.6^2 + 3.6^2) = 5.1
    assert (
        "HPR above every baseline (Base, LoRA, Diff, ITI): MC1 within noise (HPR − Diff = +4.7 points, "
        "not beyond the combined standard error 5.1)"
    ) in smol
    assert "HPR above ITI: MC1 holds (HPR − ITI = +14.1 points, beyond the combined standard error 5.1)" in smol
    assert "-AnglePred close to Base: MC1 holds (-AnglePred − Base = +1.2 points, within" in smol
    assert "HPR far above Diff: MC1 cannot be checked (no Diff result)" in gemma
    t2 = tables.table2_claims(tables.main_rows(rows), [SMOL])
    assert "BBQ holds (HPR − Base = +14.3 points, beyond the combined standard error 4.2)" in t2
    assert "SEQ does not hold (HPR (transfer) − Base = -1.7 points" in t2
    t3 = tables.table3_claims(flips)
    assert "false→true than ITI-15: within noise (HPR − ITI-15 = +40.0 points, not beyond" not in t3
    assert "false→true than ITI-15: holds (HPR − ITI-15 = +40.0 points" in t3
    assert "behaviour shift rate far above ITI-15's: holds (ITI-200 − ITI-15 = +50.0 points" in t3
    assert "ITI-200 below ITI-15 in overall accuracy: does not hold (ITI-15 − ITI-200 = -10.0 points" in t3


def test_claim_verdicts() -> None:
    assert tables.claim_greater((50.0, 2.0), (40.0, 2.0), "A", "B").startswith("holds (A − B = +10.0 points")
    assert tables.claim_greater((41.0, 2.0), (40.0, 2.0), "A", "B").startswith("within noise")
    assert tables.claim_greater((39.0, 2.0), (40.0, 2.0), "A", "B").startswith("does not hold")
    assert tables.claim_similar((41.0, 2.0), (40.0, 2.0), "A", "B").startswith("holds")
    assert tables.claim_similar((45.0, 2.0), (40.0, 2.0), "A", "B").startswith("does not hold")
    assert tables.claim_beats_all((50.0, 1.0), [("B", (40.0, 1.0)), ("C", None)]) == (
        "holds (smallest margin HPR − B = +10.0 points, beyond the combined standard error 1.4; no result for C)"
    )


def test_results_markdown(rows: list[dict[str, Any]], flips: dict[str, dict[str, dict[str, float]]]) -> None:
    md = tables.results_markdown(rows, flips)
    assert md.index("## Table 1") < md.index("## Table 2") < md.index("## Table 3")
    assert "Ours: SmolLM2-135M-Instruct: n = 149, test split, source bigbench; Gemma-3-270M: n = 149" in md
    assert (
        "SmolLM2-135M-Instruct BBQ: n = 300, test split, source bigbench, capped at 300 examples (random, seed 0)" in md
    )
    assert "Ours: SmolLM2-135M-Instruct: n = 10, test split, source bigbench (no flip rates for Gemma-3-270M)" in md
    assert "99.0" not in md  # tagged and non-test rows stay out
    assert "not transcribed" not in md


def loglik_preds(logliks: list[list[float]]) -> list[dict[str, Any]]:
    return [{"id": str(i), "correct": False, "logliks": ll} for i, ll in enumerate(logliks)]


@pytest.fixture
def shifts() -> dict[str, dict[str, dict[str, float]]]:
    """loglik_shift dicts on 3 questions x 2 choices: HPR lowers every choice by 2 nats, ITI-200 by
    1..51 nats, Diff raises every choice by 0.5."""
    from hpr.evaluation.metrics import loglik_shift

    base = [[-10.0, -12.0], [-20.0, -8.0], [-15.0, -9.0]]
    runs = {
        "hpr": [[x - 2.0 for x in q] for q in base],
        "iti-200": [[base[i][j] - 1.0 - 10.0 * (2 * i + j) for j in range(2)] for i in range(3)],
        "diff": [[x + 0.5 for x in q] for q in base],
    }
    return {SMOL: {meth: loglik_shift(loglik_preds(base), loglik_preds(r)) for meth, r in runs.items()}}


def test_loglik_table_and_claims(shifts: dict[str, dict[str, dict[str, float]]]) -> None:
    from hpr.study import costs

    md = costs.loglik_table(shifts)
    body = {r[0]: r[1:] for r in table_rows(md, "Base") + table_rows(md, "Diff") + table_rows(md, "HPR")}
    # base median of -8, -9, -10, -12, -15, -20 is -11.0
    assert body["Base"] == ["-11.0", "0.0", "0.0"]
    assert body["HPR"] == ["-13.0", "-2.0", "-2.0"]
    assert body["Diff"] == ["-10.5", "0.5", "0.5"]
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert [ln.split("|")[1].strip() for ln in lines[1:]] == ["Base", "Diff", "HPR", "ITI (α = 200)"]
    text = costs.loglik_claims(shifts)
    assert "median choice log-likelihood is -11.0 nats" in text
    assert "smallest cost first: Diff +0.5, HPR -2.0, ITI (α = 200) -26.0" in text
    # ITI-200's changes: -1, -11, ..., -51; 10th percentile = -46.0
    assert "2 of 3 edits make the median choice less likely; under ITI (α = 200) a tenth" in text
    assert "lose more than 46.0 nats" in text


def test_results_markdown_shows_the_cost_after_table1(
    rows: list[dict[str, Any]],
    flips: dict[str, dict[str, dict[str, float]]],
    shifts: dict[str, dict[str, dict[str, float]]],
) -> None:
    md = tables.results_markdown(rows, flips, shifts)
    assert md.index("## Table 1") < md.index("costs in likelihood") < md.index("## Table 2")
    assert "costs in likelihood" not in tables.results_markdown(rows, flips)


def test_empty_input_says_how_to_fill_it() -> None:
    assert "run `make book`" in tables.results_markdown([], {})
    assert tables.results_markdown([row(SMOL, "hpr", "truthfulqa", {}, tag="x")], {}) == tables.NO_RESULTS


def test_imports_no_torch() -> None:
    # the package's __init__ files import heavier parts, so check the modules' own imports: the standard
    # library and hpr's paper, claims, labels and errors only
    from hpr.study import claims, costs, labels

    for mod in (tables, paper, claims, labels, costs):
        tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {f"{'.' * n.level}{n.module or ''}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert names <= {
            "__future__",
            "csv",
            "io",
            "math",
            "re",
            "collections.abc",
            "dataclasses",
            "functools",
            "importlib",
            "typing",
            "hpr.study",
            "hpr.study.paper",
            "hpr.study.claims",
            "hpr.study.costs",
            "hpr.study.labels",
            "hpr.errors",
        }, names
