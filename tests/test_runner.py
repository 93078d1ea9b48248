"""The papermill runner: parameters, dependency order, resume, failure reports, run records."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from hpr import runner
from hpr.cli import main
from hpr.errors import ParameterError


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("seed = 0\nout_dir = 'runs'\nfail = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(runner, "NOTEBOOKS", (runner.NotebookSpec("a"), runner.NotebookSpec("b", ("a",)),
                                              runner.NotebookSpec("c")))
    _notebook(tmp_path / "notebooks" / "a.ipynb",
              "import pathlib\nif fail: raise RuntimeError('boom in a')\n"
              "pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True); (pathlib.Path(out_dir) / 'a.txt').write_text(str(seed))")
    _notebook(tmp_path / "notebooks" / "b.ipynb", "print(open(out_dir + '/a.txt').read())")
    _notebook(tmp_path / "notebooks" / "c.ipynb", "print('c', seed)")
    return tmp_path


def test_overrides_and_profiles() -> None:
    assert runner.parse_overrides(["k=3", 'models=["x"]', "model=org/name"]) == {
        "k": 3, "models": ["x"], "model": "org/name"}
    with pytest.raises(ParameterError):
        runner.parse_overrides(["novalue"])
    p = runner.profile_parameters("cpu", {"model": "org/name"})
    assert p["models"] == ["org/name"] and p["profile"] == "cpu"
    assert runner.PROFILES["cpu"]["caps"]["bbq"] == 300 and runner.PROFILES["gpu"]["caps"]["bbq"] is None
    with pytest.raises(ParameterError, match="unknown profile"):
        runner.profile_parameters("tpu")


def test_run_resume_and_failure(study: Path) -> None:
    logs: list[str] = []
    res = runner.run_study("cpu", {"seed": 1}, root=study, log=logs.append)
    assert [(r.name, r.status) for r in res] == [("a", "ran"), ("b", "ran"), ("c", "ran")]
    out = study / "book" / "notebooks" / "a.ipynb"
    nb = nbformat.read(out, as_version=4)
    rec = nb.metadata["hpr"]
    assert rec["parameters"] == {"seed": 1, "out_dir": "runs/book"} and rec["status"] == "ok"
    assert {"version", "commit", "seconds", "finished", "profile"} <= set(rec)
    assert "Run record" in nb.cells[-1].source
    # a rerun skips finished work
    res = runner.run_study("cpu", {"seed": 1}, root=study, log=logs.append)
    assert [r.status for r in res] == ["skipped", "skipped", "skipped"]
    # a failing notebook: its cell and error are reported, dependents blocked, finished kept
    res = runner.run_study("cpu", {"seed": 2, "fail": True}, root=study, log=logs.append)
    status = {r.name: r for r in res}
    assert status["a"].status == "failed" and status["a"].cell == 3 and "boom in a" in status["a"].error
    assert status["b"].status == "blocked" and status["c"].status == "ran"
    assert (study / "book" / "notebooks" / "failed" / "a.ipynb").is_file()
    assert nbformat.read(out, as_version=4).metadata["hpr"]["parameters"]["seed"] == 1  # kept
    assert any("FAILED in code cell 3" in line for line in logs)


def test_cli_run_only_and_unknown(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--root", str(study), "--only", "c", "-p", "seed=5"]) == 0
    assert "c " in capsys.readouterr().out
    assert main(["run", "--root", str(study), "--only", "zzz"]) == 2


def test_missing_parameters_cell(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, str(tmp_path / "x.ipynb"))
    with pytest.raises(ParameterError, match="parameters"):
        runner.declared_parameters(tmp_path / "x.ipynb")


def test_source_notebooks_declare_parameters() -> None:
    root = Path(__file__).resolve().parents[1]
    for spec in runner.NOTEBOOKS:
        names = runner.declared_parameters(root / "notebooks" / f"{spec.name}.ipynb")
        assert {"profile", "models", "dataset", "data_dir", "seed", "out_dir", "k"} <= names
