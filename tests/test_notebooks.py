"""Every notebook of the book, executed by papermill on the tiny random model with tiny data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from notebook_helpers import executed_study

pytestmark = pytest.mark.slow  # six kernels, about 2-3 minutes on two cores


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    return executed_study(tmp_path_factory.mktemp("book"))


def _outputs(path: Path) -> list[dict[str, Any]]:
    nb = nbformat.read(path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(path: Path) -> str:
    """Every HTML and Markdown output of the notebook, joined."""
    return "".join(o.get("data", {}).get(kind, "") for o in _outputs(path) for kind in ("text/html", "text/markdown"))


def test_all_notebooks_ran(study: tuple[Path, list[Any]]) -> None:
    root, results = study
    assert [(r.name, r.status) for r in results] == [
        (s, "ran")
        for s in (
            "03_hpr_training",
            "02_probe_accuracy",
            "04_benchmarks",
            "05_flip_rates",
            "01_activation_norms",
            "06_rotate_activations",
            "07_extended",
        )
    ], [(r.name, r.status, r.cell, r.error) for r in results]
    for r in results:
        nb = nbformat.read(root / "book" / "notebooks" / f"{r.name}.ipynb", as_version=4)
        params = nb.metadata["hpr"]["parameters"]
        assert params.get("model") == "tiny-random" or params.get("models") == ["tiny-random"]
        assert not any(
            o.get("output_type") == "error" for o in _outputs(root / "book" / "notebooks" / f"{r.name}.ipynb")
        )


@pytest.mark.parametrize(
    "name,images", [("01_activation_norms", 2), ("02_probe_accuracy", 1), ("03_hpr_training", 2), ("04_benchmarks", 1)]
)
def test_figures_present(study: tuple[Path, list[Any]], name: str, images: int) -> None:
    outs = _outputs(study[0] / "book" / "notebooks" / f"{name}.ipynb")
    assert sum("image/png" in o.get("data", {}) for o in outs) >= images


def test_tables_and_artifacts(study: tuple[Path, list[Any]]) -> None:
    root = study[0]
    text = _text(root / "book/notebooks/04_benchmarks.ipynb")
    assert "| Method | tiny random Llama MC1 |" in text and "Llama-2-7B-Chat MC1 (paper)" in text
    assert "| -AnglePred |" in text and "| Diff (MSE design) |" in text and "| LoRA |" in text
    assert "tiny random Llama BBQ" in text and "HPR (TruthfulQA editors, transfer)" in text
    assert "p_value" in text and "verdict" in text
    assert "| Method | tiny random Llama median log-lik |" in text and "edits make the median choice" in text
    extended = _text(root / "book/notebooks/07_extended.ipynb")
    assert "| HPR (unit variant) |" in extended and "| ITI (K = 2 heads) |" in extended  # Table 1, every method
    assert "tiny random Llama median change" in extended  # the likelihood cost beside Table 1
    assert "mc1 per seed" in extended and "Seeds: [0, 1]." in extended  # the seed-spread table
    assert "probe val accuracy (%)" in extended and "layers above base (MC1)" in extended  # the layer sweep
    assert "share_pred_below_0.01" in extended and "mean_share" in extended  # angle fit, plane assumption
    assert "False→True" in extended and "HPR (unit variant)" in extended  # Table 3 with the variant
    assert not list((root / "runs" / "book").glob("*/*/seed1"))  # the extended study keeps to its out_dir
    flips = _text(root / "book/notebooks/05_flip_rates.ipynb")
    assert "False→True" in flips and "ITI-200" in flips and "Llama-2-7B-Chat (paper)" in flips
    run = root / "runs" / "book" / "tiny-random" / "truthfulqa" / "seed0"
    assert list(run.glob("hpr-*/config.json")) and list(run.glob("iti-*/config.json"))
    results = list((run / "results" / "truthfulqa").glob("hpr-*/results.json"))  # hpr.evaluation.evaluate's format
    assert results and all((r.parent / "predictions.jsonl").is_file() for r in results)


def test_rotation_notebook_has_widget_and_player(study: tuple[Path, list[Any]]) -> None:
    path = study[0] / "book/notebooks/06_rotate_activations.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state")
    html = "".join(o.get("data", {}).get("text/html", "") for o in _outputs(path))
    assert "anim" in html and "https://" not in html
