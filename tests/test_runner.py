"""The papermill runner: parameters, dependency order, resume, failure reports, run records."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from hpr.cli import main
from hpr.errors import ParameterError
from hpr.study import profiles, runner


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(
        "seed = 0\nout_dir = 'runs'\nfail = False\ndata_dir = None\n"
        "source = None\nseeds = [0]\ndevice = 'auto'\ndtype = None\nadd_bos = None"
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(
        profiles,
        "NOTEBOOKS",
        (profiles.NotebookSpec("a"), profiles.NotebookSpec("b", ("a",)), profiles.NotebookSpec("c")),
    )
    lib = tmp_path / "installed-lib"  # the real hpr sources may change while the tests run
    lib.mkdir()
    (lib / "m.py").write_text("A = 1\n")
    monkeypatch.setattr(runner, "library_root", lambda: lib)
    _notebook(
        tmp_path / "notebooks" / "a.ipynb",
        "import pathlib\nif fail: raise RuntimeError('boom in a')\n"
        "pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True); (pathlib.Path(out_dir) / 'a.txt').write_text(str(seed))\n"
        "(pathlib.Path(out_dir) / 'results.json').write_text('{\"seed\": %d}' % seed)",
    )
    _notebook(tmp_path / "notebooks" / "b.ipynb", "print(open(out_dir + '/a.txt').read())")
    _notebook(
        tmp_path / "notebooks" / "c.ipynb", "import os\nprint('c', seed, 'offline', os.environ.get('HF_HUB_OFFLINE'))"
    )
    return tmp_path


def test_overrides_and_profiles() -> None:
    assert profiles.parse_overrides(["k=3", 'models=["x"]', "model=org/name"]) == {
        "k": 3,
        "models": ["x"],
        "model": "org/name",
    }
    with pytest.raises(ParameterError):
        profiles.parse_overrides(["novalue"])
    p = profiles.profile_parameters("cpu", {"model": "org/name"})
    assert p["models"] == ["org/name"] and p["profile"] == "cpu"
    assert profiles.PROFILES["cpu"]["caps"]["bbq"] == 200 and profiles.PROFILES["gpu"]["caps"]["bbq"] is None
    with pytest.raises(ParameterError, match="unknown profile"):
        profiles.profile_parameters("tpu")


def test_run_resume_and_failure(study: Path) -> None:
    logs: list[str] = []
    res = runner.run_study("cpu", {"seed": 1}, root=study, log=logs.append)
    assert [(r.name, r.status) for r in res] == [("a", "ran"), ("b", "ran"), ("c", "ran")]
    out = study / "book" / "notebooks" / "a.ipynb"
    nb = nbformat.read(out, as_version=4)
    rec = nb.metadata["hpr"]
    assert (
        rec["parameters"]
        == {
            "seed": 1,
            "out_dir": "runs/book",
            "data_dir": None,
            "source": None,
            "device": "auto",
            "dtype": None,
            "add_bos": None,
        }
        and rec["status"] == "ok"
    )
    assert (rec["device"], rec["dtype"]) == ("cpu", "float32")  # what device="auto" resolved to here
    assert "device `cpu`, dtype `float32`" in nb.cells[-1].source
    assert rec["machine"] == runner.machine() and f"machine {rec['machine']};" in nb.cells[-1].source
    assert f"{os.cpu_count()} cores" in rec["machine"]
    assert {"version", "commit", "seconds", "finished", "profile", "inputs_sha256", "out_dir"} <= set(rec)
    assert set(rec["inputs"]) == {"library", "notebook", "parameters", "data"} and rec["out_dir"] == "runs/book"
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


def test_running_notebook_is_scratch_a_later_run_sweeps(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """papermill writes into a scratch file named by ``_files`` (this process's owner and pid), so
    what a killed run left is removed by the next run into that folder, and two runs never share
    one; the executed notebook names its final path as papermill's ``output_path``."""
    import papermill as pm

    from hpr import _files

    written: list[Path] = []
    execute = pm.execute_notebook

    def spy(src: str, out: str, **kw: object) -> object:
        written.append(Path(out))
        return execute(src, out, **kw)

    monkeypatch.setattr(pm, "execute_notebook", spy)
    nbdir = study / "book" / "notebooks"
    nbdir.mkdir(parents=True)
    left = nbdir / f".c.ipynb.{_files._owner()}.999999999.abcd_123.ipynb"  # a killed run's (no such pid)
    left.write_text("{")
    assert [r.status for r in runner.run_study("cpu", {}, only=["c"], root=study, log=lambda _: None)] == ["ran"]
    (tmp,) = written
    m = _files._SCRATCH.match(tmp.name)
    assert tmp.parent == nbdir and m and (m["owner"], m["pid"]) == (_files._owner(), str(os.getpid()))
    assert not left.exists() and sorted(p.name for p in nbdir.iterdir()) == ["c.ipynb"]
    nb = nbformat.read(nbdir / "c.ipynb", as_version=4)
    assert nb.metadata["papermill"]["output_path"] == str(nbdir / "c.ipynb")
    with pytest.raises(ValueError, match="'.tmp' or '.ipynb'"):
        _files.scratch_file(nbdir / "c.ipynb", suffix=".json")


def test_cli_run_only_and_unknown(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--root", str(study), "--only", "c", "-p", "seed=5"]) == 0
    assert "c " in capsys.readouterr().out
    assert main(["run", "--root", str(study), "--only", "zzz"]) == 2


def test_missing_parameters_cell(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, str(tmp_path / "x.ipynb"))
    with pytest.raises(ParameterError, match="parameters"):
        profiles.declared_parameters(tmp_path / "x.ipynb")


def test_source_notebooks_declare_parameters() -> None:
    root = Path(__file__).resolve().parents[1]
    for spec in profiles.NOTEBOOKS:
        names = profiles.declared_parameters(root / "notebooks" / f"{spec.name}.ipynb")
        assert {"dataset", "data_dir", "seed", "out_dir", "k", "source", "device", "dtype", "device_map"} <= names


def test_profiles_choose_their_notebooks() -> None:
    main = profiles.profile_notebooks("cpu")
    assert "07_extended" not in main and "03_hpr_training" in main
    assert profiles.profile_notebooks("cpu-extended") == ["07_extended"]
    assert profiles.profile_notebooks("gpu") == [s.name for s in profiles.NOTEBOOKS]
    assert profiles.PROFILES["cpu-extended"]["out_dir"] != profiles.PROFILES["cpu"]["out_dir"]
    over = profiles.profile_parameters("cpu-extended", {"model": "tiny-random"})
    assert over["seed_models"] == over["layer_sweep_models"] == over["all_methods_models"] == ["tiny-random"]


def _statuses(res: list[runner.RunResult]) -> dict[str, str]:
    return {r.name: r.status for r in res}


def test_rerun_keys_on_inputs_and_artifacts(study: Path) -> None:
    """Up to date = same library, notebook, parameters and data, and results under out_dir."""
    import shutil

    lib = study / "fakelib"
    (lib / "sub").mkdir(parents=True)
    (lib / "core.py").write_text("X = 1\n")
    (lib / "sub" / "task.yaml").write_text("a: 1\n")
    data = study / "data"
    data.mkdir()
    (data / "x.json").write_text("[1]")
    logs: list[str] = []

    def run(**kw: object) -> dict[str, str]:
        logs.clear()
        over = {"data_dir": str(data)}
        return _statuses(runner.run_study("cpu", over, root=study, log=logs.append, lib_root=lib, **kw))

    assert run() == {"a": "ran", "b": "ran", "c": "ran"}
    assert any("never ran" in line for line in logs)
    assert run() == {"a": "skipped", "b": "skipped", "c": "skipped"}  # (a) nothing changed
    src = study / "notebooks" / "a.ipynb"  # an upstream notebook that ran makes its dependents stale
    nb = nbformat.read(src, as_version=4)
    nb.cells[1].source = "x = 2"
    nbformat.write(nb, str(src))
    assert run() == {"a": "ran", "b": "ran", "c": "skipped"}
    assert any("a: running (cpu profile): notebook changed" in x for x in logs)
    assert any("b: running (cpu profile): upstream a ran again" in x for x in logs)
    (lib / "sub" / "task.yaml").write_text("a: 2\n")  # (b) a library file changed
    assert run(only=["c"]) == {"c": "ran"} and any("c: running (cpu profile): library changed" in x for x in logs)
    shutil.rmtree(study / "runs")  # (c) a fresh clone: executed notebooks present, no artifacts
    assert run(only=["c"]) == {"c": "ran"} and any("no artifacts under runs/book" in x for x in logs)
    assert run(only=["c"]) == {"c": "ran"}  # c writes no artifacts, so it stays stale
    assert run(only=["a"]) == {"a": "ran"}  # a re-creates them (its library changed too)
    assert run(only=["c"]) == {"c": "skipped"}
    (data / "x.json").write_text("[1, 2]")  # the data changed
    assert run(only=["c"]) == {"c": "ran"} and any("data changed" in x for x in logs)
    assert run(force=True) == {"a": "ran", "b": "ran", "c": "ran"}
    assert any("--force" in x for x in logs)


def test_stale_reason_unit(tmp_path: Path) -> None:
    inputs = {"library": "l", "notebook": "n", "parameters": "p", "data": "d"}
    from hpr._files import stable_hash

    rec = {"status": "ok", "inputs": inputs, "inputs_sha256": stable_hash(inputs, 64)}
    (tmp_path / "runs" / "r").mkdir(parents=True)
    assert runner.stale_reason(rec, inputs, "runs", tmp_path) == "no artifacts under runs"
    (tmp_path / "runs" / "r" / "empty.json").write_text("")
    assert runner.stale_reason(rec, inputs, "runs", tmp_path) == "no artifacts under runs"
    (tmp_path / "runs" / "r" / "res.json").write_text("{}")
    assert runner.stale_reason(rec, inputs, "runs", tmp_path) is None
    assert runner.stale_reason(rec, inputs, str(tmp_path / "runs"), Path("/nonexistent")) is None
    assert runner.stale_reason(rec, {**inputs, "parameters": "q"}, "runs", tmp_path) == "parameters changed"
    assert runner.stale_reason({"status": "ok", "parameters": {}}, inputs, "runs", tmp_path).startswith(
        "run record has no inputs hash"
    )
    assert runner.stale_reason({}, inputs, "runs", tmp_path) == "never ran"
    assert runner.stale_reason(rec, inputs, "runs", tmp_path, ["x"]) == "upstream x ran again"


def test_library_digest_sees_sources_not_bytecode(tmp_path: Path) -> None:
    from hpr._files import tree_digest

    (tmp_path / "m.py").write_text("a = 1\n")
    first = tree_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.cpython-312.pyc").write_bytes(b"junk")
    assert tree_digest(tmp_path) == first
    (tmp_path / "m.py").write_text("a = 2\n")
    assert tree_digest(tmp_path) != first


def test_library_root_is_the_package() -> None:
    assert runner.library_root() == Path(runner.__file__).resolve().parents[1]  # the hpr package, every part
    assert (runner.library_root() / "study" / "runner.py").is_file() and (runner.library_root() / "editor.py").is_file()


def test_profile_study_parameters() -> None:
    cpu, gpu = profiles.PROFILES["cpu"], profiles.PROFILES["gpu"]
    assert (cpu["source"], cpu["add_bos"], cpu["device"], cpu["dtype"]) == (None, None, "auto", None)
    assert profiles.PROFILES["cpu-extended"]["seeds"] == [0, 1, 2] and "seeds" not in cpu
    assert (gpu["source"], gpu["add_bos"], gpu["device"]) == ("hub", False, "auto")


def test_study_parameter_values_checked(study: Path) -> None:
    nb = study / "notebooks" / "c.ipynb"
    profiles.validate_parameters(
        nb, {"seeds": [0, 1], "source": "hub", "device": "cuda:1", "dtype": "bfloat16", "add_bos": False}
    )
    for bad, match in [
        ({"seeds": [-1]}, "integers >= 0"),
        ({"seeds": 3}, "JSON list"),
        ({"source": "web"}, "'source'"),
        ({"device": "gpu"}, "'device'"),
        ({"dtype": "float33"}, "'dtype'"),
        ({"add_bos": "yes"}, "'add_bos'"),
    ]:
        with pytest.raises(ParameterError, match=match):
            profiles.validate_parameters(nb, bad)
    assert not profiles._list_ok("fig6_ks", [0]) and profiles._list_ok("seeds", [0])


def test_cli_accepts_source_hub(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-p source=hub`` is a known parameter, and the hub is then left to the environment."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["run", "--root", str(study), "--only", "c", "-p", "source=hub", "-p", "seeds=[0,1]"]) == 0
    nb = nbformat.read(study / "book" / "notebooks" / "c.ipynb", as_version=4)
    assert nb.metadata["hpr"]["parameters"]["source"] == "hub" and nb.metadata["hpr"]["parameters"]["seeds"] == [0, 1]
    assert "offline None" in "".join(o.get("text", "") for o in nb.cells[-2].outputs)
    assert main(["run", "--root", str(study), "--only", "c", "-p", "seeds=[-1]"]) == 2
    assert main(["run", "--root", str(study), "--only", "c", "--force"]) == 0  # cpu profile, local data
    nb = nbformat.read(study / "book" / "notebooks" / "c.ipynb", as_version=4)
    assert "offline 1" in "".join(o.get("text", "") for o in nb.cells[-2].outputs)


def test_hub_left_to_environment() -> None:
    assert runner._wants_hub({"source": "hub"}) and runner._wants_hub({"models": ["org/name"]})
    assert not runner._wants_hub({"source": None, "models": ["smollm2-135m-instruct"], "model": "tiny-random"})
