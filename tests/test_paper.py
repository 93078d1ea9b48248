"""The paper's numbers shipped with the package (hpr/paper_data/tables.csv) and their accessors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpr.errors import DataError, ParameterError
from hpr.study import paper

SHARED_PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper"
PACKAGE_CSV = Path(paper.__file__).parent / "paper_data" / "tables.csv"


def test_package_copy_matches_shared_csv() -> None:
    shared = SHARED_PAPER / "tables.csv"
    if not shared.is_file():
        pytest.skip("../shared/paper is not present")
    assert PACKAGE_CSV.read_bytes() == shared.read_bytes()


def test_every_table_and_model_is_present() -> None:
    rows = paper.paper_rows()
    assert len(rows) == 70
    assert {r.table for r in rows} == set(paper.PAPER_TABLES)
    assert {r.model for r in rows} == set(paper.PAPER_MODELS)
    table1 = [r for r in rows if r.table == "Table 1"]
    assert all(r.stderr is not None for r in table1)
    assert all(r.stderr is None for r in rows if r.table != "Table 1")


def test_paper_value_reads_printed_cells() -> None:
    assert paper.paper_value(1, "Llama-2-7B-Chat", "truthfulqa", "hpr", "mc1") == (51.83, 2.47)
    assert paper.paper_value("Table 2", "Mistral-7B-Instruct", "seq", "hpr", "acc") == (86.96, None)
    assert paper.paper_value(3, "Llama-2-7B-Chat", "truthfulqa", "iti-200", "overall_acc") == (23.72, None)
    # the paper reports no ITI for Mistral, no flips for the base row
    assert paper.paper_value(1, "Mistral-7B-Instruct", "truthfulqa", "iti", "mc1") is None
    assert paper.paper_value(3, "Llama-2-7B-Chat", "truthfulqa", "base", "false_to_true") is None


def test_paper_cell_keeps_the_printed_text() -> None:
    assert paper.paper_cell(1, "Llama-3-8B-Instruct", "truthfulqa", "hpr-noangle", "mc1") == "35.94 ± 2.375"
    assert paper.paper_cell(1, "Llama-2-7B-Chat", "truthfulqa", "base", "mc2") == "43.00 ± 2.17"
    assert paper.paper_cell(2, "Mistral-7B-Instruct", "toxigen", "base", "acc") == "55.00"
    assert paper.paper_cell(1, "Mistral-7B-Instruct", "truthfulqa", "iti", "mc1") == "—"


def test_bad_names_raise_clear_errors() -> None:
    with pytest.raises(ParameterError, match="Llama-2-7B-Chat"):
        paper.paper_value(1, "llama2", "truthfulqa", "hpr", "mc1")
    with pytest.raises(ParameterError, match="1, 2, 3"):
        paper.paper_value(4, "Llama-2-7B-Chat", "truthfulqa", "hpr", "mc1")
    with pytest.raises(ParameterError, match="Table 3 has no row"):
        paper.paper_flips("lora")


def test_table3_facts() -> None:
    base = paper.paper_flips("base")
    assert base == {"remains_true": 29.58, "remains_false": 70.42, "overall_acc": 29.58}
    assert paper.paper_flips("iti-15")["shift_rate"] == pytest.approx(8.56)
    assert paper.paper_flips("iti-200")["shift_rate"] == pytest.approx(34.23)
    for method in ("iti-15", "iti-200", "hpr"):
        f = paper.paper_flips(method)
        assert sum(f[k] for k in paper.FLIP_METRICS[:4]) == pytest.approx(100.0, abs=0.02)
        assert f["overall_acc"] == pytest.approx(f["false_to_true"] + f["remains_true"], abs=0.02)
    assert paper.behaviour_shift_rate({"false_to_true": 1.5, "true_to_false": 2.0}) == 3.5
    with pytest.raises(DataError, match="true_to_false"):
        paper.behaviour_shift_rate({"false_to_true": 1.5})


def test_table1_mc1_counts_of_409_questions() -> None:
    # the paper's scores are counts out of its 409 test questions: every MC1 value is k/409
    for r in paper.paper_rows():
        if r.table == "Table 1" and r.metric == "mc1":
            k = round(r.value / 100 * paper.PAPER_TRUTHFULQA_TEST_N)
            assert abs(100 * k / paper.PAPER_TRUTHFULQA_TEST_N - r.value) < 0.006, r


def test_malformed_csv_is_a_data_error() -> None:
    with pytest.raises(DataError, match="columns"):
        paper._parse("a,b\n1,2\n", "x.csv")
    head = ",".join(paper._COLUMNS)
    with pytest.raises(DataError, match="line 2"):
        paper._parse(head + "\nTable 1,M,truthfulqa,hpr,mc1,abc,\n", "x.csv")
