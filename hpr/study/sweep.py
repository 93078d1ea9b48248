"""Sweeps: a grid of study parameters run as independent, resumable study runs.

A grid (``{"model": [a, b], "seed": [0, 1, 2]}``, from ``-p key=v1,v2`` or a YAML file) expands
into points; each point is one ``hpr.study.runner.run_study`` with its own folder under the sweep
folder, keyed by its parameters (``<sweep>/<key>/``: ``point.json``, ``status.json``, the executed
notebooks in ``notebooks/``, the artifacts in ``runs/``, the job's log). A point resumes exactly as
``hpr run`` does (finished notebooks and artifacts are reused); a failed point never stops the
others, and running the sweep again retries only the points not done.

Executors: ``local`` runs the points one after another in this process; ``slurm`` submits them as a
job array through ``submitit`` (GPUs, CPUs, memory, time limit and partition per job; logs under
``<sweep>/jobs/``); ``submitit-local`` is the same code with submitit's ``LocalExecutor`` (each
point a local process), which the tests use. ``status`` reads the state of every point from the
files on disk, so a user can close the terminal and come back.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpr import _files
from hpr._extras import require
from hpr.errors import ParameterError

EXECUTORS = ("local", "slurm", "submitit-local")
POINT_FILE, STATUS_FILE = "point.json", "status.json"
#: submitit Slurm options a sweep passes on (names as ``SlurmExecutor.update_parameters`` takes them).
SLURM_OPTIONS = (
    "partition",
    "time",
    "gpus_per_node",
    "cpus_per_task",
    "mem",
    "array_parallelism",
    "account",
    "qos",
    "constraint",
)


@dataclass(frozen=True)
class Point:
    """One run of a sweep: ``parameters`` are the notebook overrides of this grid point."""

    key: str
    profile: str
    parameters: dict[str, Any]
    folder: str
    root: str
    only: tuple[str, ...] = ()


@dataclass
class SweepSpec:
    """What a sweep runs: a profile, the grid, fixed parameters, the notebooks, and the executor."""

    profile: str = "cpu"
    grid: dict[str, list[Any]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    only: list[str] = field(default_factory=list)
    executor: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["model=a,b", "seed=0,1,2", 'methods=["base","hpr"]']`` -> lists of values per key.

    A value that is JSON is one value (a JSON list is one value too: write ``k=[1,2]`` for a list
    parameter); otherwise commas separate values, each read as JSON when it parses.
    """
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"bad grid entry {item!r}: write key=v1,v2, e.g. -p seed=0,1,2")
        try:
            out[key.strip()] = [json.loads(text)]
            continue
        except json.JSONDecodeError:
            pass
        vals = []
        for part in text.split(","):
            try:
                vals.append(json.loads(part))
            except json.JSONDecodeError:
                vals.append(part)
        out[key.strip()] = vals
    return out


def read_spec(path: str | Path) -> SweepSpec:
    """A sweep from YAML: ``profile``, ``grid`` (key -> list), ``parameters``, ``only``, ``executor``,
    ``slurm`` (see ``SLURM_OPTIONS``); ``ParameterError`` naming what is wrong."""
    yaml = require("yaml", "book", "reading a sweep file")
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"cannot read the sweep file {p}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParameterError(f"{p}: a sweep file is a mapping with profile, grid, parameters, only, executor, slurm")
    unknown = set(raw) - set(SweepSpec.__dataclass_fields__)
    if unknown:
        raise ParameterError(f"{p}: unknown key(s) {sorted(unknown)}; known: {sorted(SweepSpec.__dataclass_fields__)}")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ParameterError(f"{p}: grid maps each parameter to a non-empty list, e.g. grid: {{seed: [0, 1, 2]}}")
    spec = SweepSpec(**{k: v for k, v in raw.items() if v is not None})
    bad = set(spec.slurm) - set(SLURM_OPTIONS)
    if bad:
        raise ParameterError(f"{p}: unknown slurm option(s) {sorted(bad)}; known: {', '.join(SLURM_OPTIONS)}")
    return spec


def point_key(values: Mapping[str, Any]) -> str:
    """A folder name for a grid point: ``model=smollm2-135m-instruct,seed=1`` made file-safe, plus a
    short hash of the exact values (distinct values never share a folder)."""
    text = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(values.items()))
    return f"{_files.slug(text)[:80]}-{_files.stable_hash(dict(values), 8)}"


def expand(spec: SweepSpec, folder: str | Path, root: str | Path = ".") -> list[Point]:
    """Every grid point of ``spec`` as a ``Point`` under ``folder`` (grid keys in sorted order), each
    with the fixed parameters, the grid values, and its own ``out_dir``; ``ParameterError`` for an
    empty grid or parameters no notebook takes (checked by ``profile_parameters``' validation)."""
    from hpr.study.profiles import profile_parameters

    if not spec.grid:
        raise ParameterError("a sweep needs a grid: -p key=v1,v2 (or grid: in the sweep file)")
    if spec.executor not in EXECUTORS:
        raise ParameterError(f"unknown executor {spec.executor!r}; choose one of {', '.join(EXECUTORS)}")
    keys = sorted(spec.grid)
    base = Path(folder).resolve()
    points = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        key = point_key(values)
        params = {**spec.parameters, **values, "out_dir": str(base / key / "runs")}
        profile_parameters(spec.profile, params)  # unknown profile -> ParameterError now, not in a job
        points.append(Point(key, spec.profile, params, str(base / key), str(Path(root).resolve()), tuple(spec.only)))
    if len({p.key for p in points}) != len(points):
        raise ParameterError("two grid points share a folder; give distinct values")
    return points


def _write_status(point: Point, **status: Any) -> None:
    _files.write_json(Path(point.folder) / STATUS_FILE, {"key": point.key, **status})


def run_point(point: Point) -> dict[str, Any]:
    """Run one grid point (the job function: picklable, runs in this process or a submitit job) and
    record its state: ``running`` with the pid and start time, then ``done`` or ``failed`` with the
    failing notebook, cell and error. Returns the final status."""
    from hpr.study.runner import run_study

    folder = Path(point.folder)
    folder.mkdir(parents=True, exist_ok=True)
    _files.write_json(folder / POINT_FILE, asdict(point))
    started = time.time()
    _write_status(point, state="running", pid=os.getpid(), host=os.uname().nodename, started=started)
    log_path = folder / "run.log"
    try:
        with log_path.open("a", encoding="utf-8") as log:

            def write_log(message: str) -> None:
                log.write(message + "\n")
                log.flush()

            results = run_study(
                point.profile,
                point.parameters,
                only=list(point.only) or None,
                root=point.root,
                output_dir=str(folder / "notebooks"),
                log=write_log,
            )
    except Exception as exc:  # noqa: BLE001 - a point's failure is recorded, the sweep goes on
        status = {
            "state": "failed",
            "started": started,
            "finished": time.time(),
            "notebook": None,
            "cell": None,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
        _write_status(point, **status)
        return {"key": point.key, **status}
    bad = [r for r in results if r.status in ("failed", "blocked")]
    first = next((r for r in bad if r.status == "failed"), bad[0] if bad else None)
    status = {
        "state": "failed" if bad else "done",
        "started": started,
        "finished": time.time(),
        "seconds": round(time.time() - started, 1),
        "notebooks": {r.name: r.status for r in results},
        "notebook": first.name if first else None,
        "cell": first.cell if first else None,
        "error": first.error if first else "",
    }
    _write_status(point, **status)
    return {"key": point.key, **status}


def read_status(folder: str | Path) -> dict[str, Any]:
    """The state of one point folder: ``pending`` (no status yet), ``running``, ``done``, ``failed``;
    a ``running`` point whose local process is gone reads ``stopped`` (killed: rerun to resume)."""
    path = Path(folder) / STATUS_FILE
    if not path.is_file():
        return {"key": Path(folder).name, "state": "pending"}
    try:
        st = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"key": Path(folder).name, "state": "unknown", "error": f"{path} is unreadable"}
    if st.get("state") == "running" and st.get("host") == os.uname().nodename and not _alive(int(st.get("pid", 0))):
        st["state"] = "stopped"
    return dict(st)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_status(folder: str | Path, points: Sequence[Point] | None = None) -> list[dict[str, Any]]:
    """Every point's state under the sweep ``folder`` (the points given, else every point folder)."""
    base = Path(folder)
    dirs = (
        [Path(p.folder) for p in points]
        if points is not None
        else sorted(d for d in base.iterdir() if d.is_dir() and (d / POINT_FILE).is_file())
        if base.is_dir()
        else []
    )
    return [read_status(d) for d in dirs]


def import_submitit() -> Any:
    """Import ``submitit`` without letting it reconfigure this process's logging: at import it runs
    ``logging.config.dictConfig``, which closes every handler that exists (in a notebook or a test
    run, a handler holding ``sys.stderr`` then closes that stream). ``SUBMITIT_LOG_LEVEL=NOCONFIG``
    is set for the import only, so job processes still configure submitit's own log lines."""
    before = os.environ.get("SUBMITIT_LOG_LEVEL")
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
    try:
        return require("submitit", "cluster", "the slurm and submitit-local executors")
    finally:
        if before is None:
            os.environ.pop("SUBMITIT_LOG_LEVEL", None)


def _executor(kind: str, folder: Path, slurm: Mapping[str, Any]) -> Any:
    submitit = import_submitit()
    logs = folder / "jobs"
    if kind == "slurm":
        ex = submitit.SlurmExecutor(folder=logs)
        ex.update_parameters(**{"time": 240, **dict(slurm)})
    else:
        ex = submitit.LocalExecutor(folder=logs)
        ex.update_parameters(timeout_min=int(slurm.get("time", 240)))
    return ex


def run_sweep(
    spec: SweepSpec, folder: str | Path, root: str | Path = ".", force: bool = False, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Run every point of ``spec`` that is not done (all with ``force``), with ``spec.executor``;
    returns the final status of each point. A point's failure is reported, not raised."""
    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    points = expand(spec, base, root)
    _files.write_json(base / "sweep.json", {**asdict(spec), "points": [p.key for p in points]})
    todo = [p for p in points if force or read_status(p.folder).get("state") != "done"]
    log(f"[hpr sweep] {len(points)} point(s), {len(points) - len(todo)} done, {len(todo)} to run ({spec.executor})")
    if spec.executor == "local":
        for p in todo:
            log(f"[hpr sweep] {p.key}: running")
            st = run_point(p)
            log(
                f"[hpr sweep] {p.key}: {st['state']}"
                + (f" ({st['notebook']}: {st['error']})" if st["state"] != "done" else "")
            )
    elif todo:
        ex = _executor(spec.executor, base, spec.slurm)
        jobs = ex.map_array(run_point, todo)
        for p, job in zip(todo, jobs, strict=True):
            log(f"[hpr sweep] {p.key}: submitted as job {job.job_id}")
        for p, job in zip(todo, jobs, strict=True):
            try:
                st = job.result()
                log(f"[hpr sweep] {p.key}: {st['state']}")
            except Exception as exc:  # noqa: BLE001 - a job that died (killed, out of time or memory)
                _write_status(p, state="failed", notebook=None, cell=None, error=f"job {job.job_id}: {exc}"[:2000])
                log(f"[hpr sweep] {p.key}: failed (job {job.job_id}: {type(exc).__name__})")
    return sweep_status(base, points)


def status_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of ``sweep_status`` rows: key, state, seconds, failing notebook and error."""
    lines = [f"{'point':<60} {'state':<8} {'seconds':>8}  error"]
    for r in rows:
        err = f"{r.get('notebook')} cell {r.get('cell')}: {r.get('error')}" if r.get("state") == "failed" else ""
        secs = r.get("seconds") or (
            round(time.time() - r["started"]) if r.get("state") == "running" and r.get("started") else ""
        )
        lines.append(f"{r['key'][:60]:<60} {r['state']:<8} {secs!s:>8}  {err[:160]}")
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in dict.fromkeys(r["state"] for r in rows)}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) or "no points")
    return "\n".join(lines)


def sweep_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Every results row of every point of the sweep (``hpr.study.results.collect_results``), each with
    the point's key and grid values added (``sweep_point``, ``sweep_values``)."""
    from hpr.study.results import collect_results

    rows = []
    for d in sorted(p for p in Path(folder).iterdir() if (p / POINT_FILE).is_file()):
        point = json.loads((d / POINT_FILE).read_text(encoding="utf-8"))
        for r in collect_results(d / "runs"):
            rows.append({**r, "sweep_point": point["key"], "sweep_values": point["parameters"]})
    return rows


def sweep_markdown(folder: str | Path) -> str:
    """The results of a sweep aggregated: per dataset, one row per (model, method, training dataset)
    with the number of seeds (grid points) it ran on and, per metric, the mean and the sample
    standard deviation over them (percent). Generated from the points' results files."""
    import math

    from hpr.study.labels import DATASET_LABELS, markdown_table, method_label, model_label

    rows = [r for r in sweep_rows(folder) if not r.get("tag")]
    if not rows:
        return "*No results in this sweep yet: run `hpr sweep` first.*\n"
    metrics = {"truthfulqa": ("mc1", "mc2")}
    parts = [
        f"*Sweep `{Path(folder).name}`: {len({r['sweep_point'] for r in rows})} run(s); mean ± sample "
        "standard deviation over the seeds each row ran on (%).*"
    ]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
        for r in rows:
            if r["dataset"] == ds:
                groups.setdefault((r["model"], r["method"], r.get("train_dataset") or ds), []).append(r)
        names = metrics.get(ds, ("acc",))
        body = []
        for (model, method, train), rs in groups.items():
            cells = []
            for m in names:
                vals = [100 * float(r["metrics"][m]["value"]) for r in rs if m in r.get("metrics", {})]
                mean = sum(vals) / len(vals) if vals else float("nan")
                sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
                cells.append("—" if not vals else f"{mean:.1f}" + (f" ± {sd:.1f}" if sd is not None else ""))
            seeds = sorted({int(r["seed"]) for r in rs})
            label = method_label(method) + ("" if train == ds else f" (trained on {DATASET_LABELS.get(train, train)})")
            body.append([model_label(model), label, f"{len(seeds)} ({', '.join(map(str, seeds))})", *cells])
        parts.append(f"## {DATASET_LABELS.get(ds, ds)}")
        parts.append(markdown_table(["Model", "Method", "Seeds", *[m.upper() for m in names]], body))
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


__all__ = [
    "EXECUTORS",
    "SLURM_OPTIONS",
    "Point",
    "SweepSpec",
    "expand",
    "parse_grid",
    "point_key",
    "read_spec",
    "read_status",
    "run_point",
    "run_sweep",
    "status_table",
    "sweep_markdown",
    "sweep_rows",
    "sweep_status",
]
