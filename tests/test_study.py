"""The book's cached artifacts are keyed by the parameters that change them."""

from __future__ import annotations

from pathlib import Path

from hpr import study


def test_results_path_changes_with_every_parameter(tmp_path):
    base = study.results_path("m", "hpr", "truthfulqa", 0, tmp_path, k=5)
    assert study.results_path("m", "hpr", "truthfulqa", 0, tmp_path, k=3) != base
    assert study.results_path("m", "hpr", "truthfulqa", 0, tmp_path, k=5, train_cap=10) != base
    assert study.results_path("m", "hpr", "truthfulqa", 0, tmp_path, k=5, data_dir=tmp_path) != base
    assert study.results_path("m", "hpr", "truthfulqa", 0, tmp_path, k=5, limit=7) != base
    assert study.results_path("m", "hpr", "truthfulqa", 1, tmp_path, k=5) != base
    # k does not change what the base model or ITI scores, so they share one file across k
    assert study.results_path("m", "base", "truthfulqa", 0, tmp_path, k=5) == study.results_path(
        "m", "base", "truthfulqa", 0, tmp_path, k=3
    )


def test_method_dir_changes_with_options_and_data(tmp_path, monkeypatch):
    a = study.method_dir("m", "diff", "truthfulqa", 0, tmp_path, options={"layers": [1, 2]})
    assert study.method_dir("m", "diff", "truthfulqa", 0, tmp_path, options={"layers": [1, 3]}) != a
    assert study.method_dir("m", "diff", "truthfulqa", 0, tmp_path, train_cap=5, options={"layers": [1, 2]}) != a
    monkeypatch.setenv("HPR_DATA_DIR", str(tmp_path))
    assert study.method_dir("m", "diff", "truthfulqa", 0, tmp_path, options={"layers": [1, 2]}) != a
    # the ITI variants share one fitted artifact
    assert study.method_dir("m", "iti-15", "truthfulqa", 0, tmp_path) == study.method_dir(
        "m", "iti-200", "truthfulqa", 0, tmp_path
    )


def test_iti_15_is_iti_one_results_file(tmp_path: Path) -> None:
    assert study.results_path("m", "iti-15", "truthfulqa", 0, tmp_path) == study.results_path(
        "m", "iti", "truthfulqa", 0, tmp_path
    )
    assert study.results_path("m", "iti-200", "truthfulqa", 0, tmp_path) != study.results_path(
        "m", "iti", "truthfulqa", 0, tmp_path
    )


def test_configure_refuses_unknown_settings() -> None:
    import pytest

    from hpr.errors import ParameterError

    with pytest.raises(ParameterError, match="unknown study setting"):
        study.configure(sourc="hub")
