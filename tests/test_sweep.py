"""``hpr sweep``: a 2 x 2 grid of study runs on the tiny random model, through submitit's
LocalExecutor (jobs as local processes, as on Slurm but on this machine), with a failing point,
a killed point that resumes, ``--status`` from the files on disk, and the aggregated tables."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from notebook_helpers import REPO, write_tiny_data

from hpr.cli import main
from hpr.errors import ParameterError
from hpr.study import sweep

pytestmark = pytest.mark.slow  # papermill kernels on the tiny model


@pytest.fixture()
def study_root(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    return root


def spec(root: Path, executor: str, grid: dict) -> sweep.SweepSpec:
    # written once per study root: rewriting the files would change the data fingerprint (file times)
    data = root / "data" if (root / "data").is_dir() else write_tiny_data(root / "data")
    return sweep.SweepSpec(
        profile="cpu",
        grid=grid,
        executor=executor,
        only=["03_hpr_training", "05_flip_rates"],
        parameters={
            "models": ["tiny-random"],
            "model": "tiny-random",
            "data_dir": str(data),
            "flip_methods": ["hpr"],
            "train_caps": {"bbq": 3, "seq": None, "toxigen": None, "truthfulqa": None},
        },
        slurm={"time": 20},
    )


def test_grid_parsing_and_keys() -> None:
    assert sweep.parse_grid(["seed=0,1,2", "model=a,b", 'methods=["base","hpr"]']) == {
        "seed": [0, 1, 2],
        "model": ["a", "b"],
        "methods": [["base", "hpr"]],
    }
    assert sweep.point_key({"seed": 1, "model": "org/m"}) != sweep.point_key({"seed": 2, "model": "org/m"})
    with pytest.raises(ParameterError, match="key=v1,v2"):
        sweep.parse_grid(["seed"])
    with pytest.raises(ParameterError, match="needs a grid"):
        sweep.expand(sweep.SweepSpec(), "x")
    with pytest.raises(ParameterError, match="unknown executor"):
        sweep.expand(sweep.SweepSpec(grid={"seed": [0]}, executor="pbs"), "x")


def test_sweep_file(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("profile: cpu\ngrid:\n  seed: [0, 1]\nexecutor: slurm\nslurm:\n  partition: gpu\n  gpus_per_node: 1\n")
    s = sweep.read_spec(f)
    assert s.grid == {"seed": [0, 1]} and s.executor == "slurm" and s.slurm["partition"] == "gpu"
    f.write_text("grid:\n  seed: [0]\nslurm:\n  gpu: 1\n")
    with pytest.raises(ParameterError, match="unknown slurm option"):
        sweep.read_spec(f)


def test_submitit_grid_failure_resume_status_and_tables(
    study_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("submitit") is None:  # not importorskip: see sweep.import_submitit
        pytest.skip("submitit is not installed")
    folder = tmp_path / "sweep"
    # 2 x 2: two seeds x two k; one more point with a model that does not exist fails on its own
    s = spec(study_root, "submitit-local", {"seed": [0, 1], "k": [1, 2]})
    rows = sweep.run_sweep(s, folder, study_root, log=lambda _m: None)
    assert sorted(r["state"] for r in rows) == ["done"] * 4, rows
    bad = spec(study_root, "submitit-local", {"seed": [0], "models": [["no-such-model-xyz"]]})
    bad_rows = sweep.run_sweep(bad, folder, study_root, log=lambda _m: None)
    assert bad_rows[0]["state"] == "failed" and bad_rows[0]["notebook"] == "03_hpr_training"
    assert "no-such-model-xyz" in bad_rows[0]["error"]
    # the four good points are untouched; the status table shows all five from the files on disk
    table = sweep.status_table(sweep.sweep_status(folder))
    assert table.count(" done ") == 4 and table.count(" failed ") == 1 and "4 done, 1 failed" in table
    assert main(["sweep", "--folder", str(folder), "--status"]) == 0
    assert "4 done, 1 failed" in capsys.readouterr().out
    # a killed point (status "running", its process gone) reads "stopped" and resumes: the notebook it
    # finished is reused, only the missing work runs
    point = next(p for p in sweep.expand(s, folder, study_root) if p.parameters["seed"] == 1 and p.parameters["k"] == 2)
    (Path(point.folder) / "notebooks" / "05_flip_rates.ipynb").unlink()
    (Path(point.folder) / sweep.STATUS_FILE).write_text(
        json.dumps({"key": point.key, "state": "running", "pid": 2**22 + 12345, "host": os.uname().nodename})
    )
    assert sweep.read_status(point.folder)["state"] == "stopped"
    again = sweep.run_sweep(
        spec(study_root, "local", {"seed": [0, 1], "k": [1, 2]}), folder, study_root, log=lambda _m: None
    )
    assert sorted(r["state"] for r in again) == ["done"] * 4
    log = (Path(point.folder) / "run.log").read_text()
    assert "03_hpr_training: up to date, skipped" in log and "05_flip_rates: running" in log, log
    # the aggregated table: per model and method, the seeds each row ran on, mean ± sd
    md = sweep.sweep_markdown(folder)
    assert "| tiny random Llama | HPR | 2 (0, 1) |" in md and "| tiny random Llama | Base | 2 (0, 1) |" in md
    assert "±" in md and "## TruthfulQA" in md


def test_local_executor_runs_points_in_order(study_root: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    rows = sweep.run_sweep(spec(study_root, "local", {"seed": [0, 1]}), tmp_path / "sw", study_root, log=logs.append)
    assert [r["state"] for r in rows] == ["done", "done"]
    assert [m.split(": ")[1] for m in logs if m.endswith(": running")] == ["running", "running"]
    rerun = sweep.run_sweep(spec(study_root, "local", {"seed": [0, 1]}), tmp_path / "sw", study_root, log=logs.append)
    assert [r["state"] for r in rerun] == ["done", "done"] and "2 done, 0 to run" in logs[-1]


_PROBE = """
import logging, sys, tempfile
stream = tempfile.TemporaryFile("w")
handler = logging.StreamHandler(stream)
handler.close = lambda: handler.stream.close()  # a handler whose close() closes its stream (as absl's)
logging.getLogger("probe").addHandler(handler)
if sys.argv[1] == "hpr":
    from hpr.study.sweep import import_submitit
    import_submitit()
else:
    import submitit
import os
print(stream.closed, "SUBMITIT_LOG_LEVEL" in os.environ)
"""


@pytest.mark.parametrize(("how", "closed"), [("hpr", "False"), ("plain", "True")])
def test_importing_submitit_leaves_the_logging_handlers_open(how: str, closed: str) -> None:
    """submitit's import runs logging.config.dictConfig, which closes every existing handler: under
    pytest's capsys, absl's handler then closed pytest's own capture file (the run died). Imported
    through ``sweep.import_submitit``, the handlers stay open and the environment is restored."""
    if importlib.util.find_spec("submitit") is None:
        pytest.skip("submitit is not installed")
    out = subprocess.run([sys.executable, "-c", _PROBE, how], capture_output=True, text=True, check=True).stdout
    assert out.split() == [closed, "False"]
