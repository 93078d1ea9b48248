"""Run the book's notebooks with papermill: dependency order, resume, failure reports (the
notebooks and profiles are in ``hpr.study.profiles``).

Source notebooks live in ``notebooks/``; executed copies land in ``book/notebooks/`` (where
``_toc.yml`` points). Each executed notebook records, in ``metadata.hpr`` and in a final
markdown cell, its parameters, the package version, the git commit, its run time and a hash
of its inputs (the ``hpr`` sources, the notebook, the parameters, a fingerprint of the data).
A notebook is skipped only when that hash matches, its output folder (parameter ``out_dir``)
holds results, and no notebook it depends on ran again; otherwise the reason is printed. A
failing notebook is reported with its cell and error, its dependents are skipped, and every
finished notebook stays in place.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from hpr import __version__, _files
from hpr._extras import require
from hpr.errors import ParameterError
from hpr.study import profiles
from hpr.study.profiles import (
    declared_parameters,
    profile_notebooks,
    profile_parameters,
    validate_parameters,
)
from hpr.study.staleness import data_fingerprint, stale_reason


@dataclass
class RunResult:
    """Outcome of one notebook: ``status`` is ``ran``, ``skipped``, ``failed`` or ``blocked``."""

    name: str
    status: str
    seconds: float = 0.0
    output: Path | None = None
    error: str = ""
    cell: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _record(path: Path) -> dict[str, Any]:
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError):
        return {}
    return dict(nb.metadata.get("hpr", {}))


def _failure(nb_path: Path) -> tuple[int | None, str]:
    """Index among the source notebook's code cells (from 1) and error text of the first failing cell."""
    nb = nbformat.read(nb_path, as_version=4)
    code_i = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        code_i += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return code_i, f"{out.get('ename')}: {out.get('evalue')}"
    return None, ""


#: Cells the rendered book hides (Jupyter Book's ``remove-cell`` tag): the parameters, papermill's
#: injected copy of them, and the setup call. One compact line of the run's parameters replaces them.
_HIDDEN_TAGS = ("parameters", "injected-parameters", "setup")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _stamp(path: Path, record: Mapping[str, Any], dest: Path) -> None:
    """Put the run record into the executed notebook at ``path`` (renamed to ``dest`` next):
    ``metadata.hpr``, a compact parameter line after the title, a final run-record cell; tag the
    parameter and setup cells ``remove-cell``; papermill's ``output_path`` names ``dest``."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata["hpr"] = dict(record)
    if "papermill" in nb.metadata:
        nb.metadata["papermill"]["output_path"] = str(dest)
    params = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sorted(record["parameters"].items()))
    text = (
        "**Run record.** "
        f"profile `{record['profile']}`; hpr {record['version']}; git commit `{record['commit']}`; "
        + (f"device `{record['device']}`, dtype `{record['dtype']}`; " if record.get("device") else "")
        + (f"machine {record['machine']}; " if record.get("machine") else "")
        + f"run time {record['seconds']:.1f} s; finished {record['finished']}.\n\nParameters: {params}."
    )
    shown = {k: v for k, v in sorted(record["parameters"].items()) if v is not None and k not in ("data_dir",)}
    line = (
        "*Run parameters* (profile `"
        + str(record["profile"])
        + "`; full record at the end): "
        + "; ".join(f"{k} `{_compact(v)}`" for k, v in shown.items())
        + "."
    )
    ours = ("hpr-run-record", "hpr-run-parameters")
    nb.cells = [c for c in nb.cells if not set(ours) & set(c.get("metadata", {}).get("tags", []))]
    for c in nb.cells:
        tags = c.setdefault("metadata", {}).setdefault("tags", [])
        if set(_HIDDEN_TAGS) & set(tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
    first = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(first, nbformat.v4.new_markdown_cell(line, metadata={"tags": ["hpr-run-parameters"]}))
    nb.cells.append(nbformat.v4.new_markdown_cell(text, metadata={"tags": ["hpr-run-record"]}))
    with _files.atomic_path(path) as tmp:
        nbformat.write(nb, str(tmp))


def _resolved_device(params: Mapping[str, Any]) -> dict[str, str]:
    """``{"device": "cuda", "dtype": "torch.bfloat16"}``: what the notebook's ``device``/``dtype``
    parameters resolve to on this machine (``hpr.lm.models``), for the run record; empty when it has none."""
    if "device" not in params and "dtype" not in params:
        return {}
    from hpr.lm.models import resolve_device, resolve_dtype

    dev = params.get("device", "auto")
    dtype = str(resolve_dtype(params.get("dtype"), dev)).removeprefix("torch.")
    if params.get("device_map"):
        return {"device": f"device_map={params['device_map']}", "dtype": dtype}
    return {"device": str(resolve_device(dev)), "dtype": dtype}


def machine() -> str:
    """This machine, for the run record: the CPU model, its logical cores and widest SIMD extension
    (float kernels, and so the last bits of trained editors, differ between CPUs), and the GPU torch
    sees, if any. For example ``"AMD EPYC (family 25, model 17), 2 cores, avx512f; GPU NVIDIA H200"``."""
    import platform

    cpu = platform.processor() or platform.machine()
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or cpu
    if "cpu family" in info and "model" in info:  # tells CPU generations apart when the name does not
        cpu += f" (family {info['cpu family']}, model {info['model']})"
    flags = set(info.get("flags", info.get("Features", "")).split())
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2", "asimd") if f in flags), None)
    out = f"{cpu}, {os.cpu_count()} cores" + (f", {simd}" if simd else "")
    import torch

    if torch.cuda.is_available():
        out += f"; GPU {torch.cuda.get_device_name(0)}"
    return out


def library_root() -> Path:
    """The installed ``hpr`` package folder: the sources whose hash keys every run."""
    return _files.package_root()


def commit_label(root: Path) -> str:
    """The checkout's commit for the run record (``-dirty`` when the tree has changes), or ``unknown``."""
    got = _files.git_commit(root)
    return "unknown" if got is None else got[0] + ("-dirty" if got[1] else "")


def _wants_hub(params: Mapping[str, Any]) -> bool:
    """Whether the run reads the Hugging Face hub: ``source=hub`` or a model spec like ``org/name``."""
    specs = [params.get("model"), *(params.get("models") or [])]
    hub_ids = [
        m
        for m in specs
        if isinstance(m, str) and "/" in m and not m.startswith(("/", ".", "~")) and not Path(m).expanduser().exists()
    ]
    return params.get("source") == "hub" or bool(hub_ids)


def run_study(
    profile: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    force: bool = False,
    root: str | Path = ".",
    source_dir: str = "notebooks",
    output_dir: str = "book/notebooks",
    kernel: str = "python3",
    log: Callable[[str], None] = print,
    lib_root: str | Path | None = None,
) -> list[RunResult]:
    """Execute the study's notebooks in dependency order; returns one result per notebook.

    ``lib_root``: the sources whose contents key the run records (default: the ``hpr`` package).
    The hub is switched off (``HF_HUB_OFFLINE``, unless set) only for a non-gpu profile that
    reads no hub data or model."""
    pm = require("papermill", "book", "hpr run (the notebooks)")

    base = Path(root).resolve()
    params = profile_parameters(profile, overrides)
    names = [s.name for s in profiles.NOTEBOOKS]
    wanted = set(only) if only else set(profile_notebooks(profile))
    unknown = wanted - set(names)
    if unknown:
        raise ParameterError(f"unknown notebook(s) {sorted(unknown)}; choose from {names}")
    known: set[str] = set()
    for spec in profiles.NOTEBOOKS:
        src = base / source_dir / f"{spec.name}.ipynb"
        if spec.name in wanted and src.is_file():  # check every notebook before running any
            declared_here = declared_parameters(src)
            known |= declared_here
            validate_parameters(src, {k: v for k, v in params.items() if k in declared_here})
    unknown_over = sorted(set(overrides or {}) - known)
    if unknown_over and known:
        raise ParameterError(
            f"unknown parameter(s) {unknown_over}: no notebook declares them; known parameters: {sorted(known)}"
        )
    commit = commit_label(base)
    host = machine()
    library = _files.tree_digest(lib_root if lib_root is not None else library_root())
    data = data_fingerprint(params, base)
    results: dict[str, RunResult] = {}
    env_backup = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MPLBACKEND")}
    if profile != "gpu" and not _wants_hub(params):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        for spec in profiles.NOTEBOOKS:
            if spec.name not in wanted:
                continue
            src = base / source_dir / f"{spec.name}.ipynb"
            dest = base / output_dir / f"{spec.name}.ipynb"
            if not src.is_file():
                raise ParameterError(f"{src} is missing; the study needs every notebook in {names}")
            declared = declared_parameters(src)
            nb_params = {k: v for k, v in params.items() if k in declared}
            source_sha = _files.file_sha256(src)
            blocked = [d for d in spec.depends if results.get(d) and results[d].status in {"failed", "blocked"}]
            if blocked:
                results[spec.name] = RunResult(spec.name, "blocked", error=f"depends on failed {blocked}")
                log(f"[hpr run] {spec.name}: skipped, depends on failed {blocked}")
                continue
            rec = _record(dest) if dest.is_file() else {}
            inputs = {
                "library": library,
                "notebook": source_sha,
                "data": data,
                "parameters": _files.stable_hash(json.loads(json.dumps(nb_params)), 64),
            }
            out_dir = str(params.get("out_dir") or "runs/book")
            upstream = [d for d in spec.depends if results.get(d) and results[d].status == "ran"]
            why = "--force" if force else stale_reason(rec, inputs, out_dir, base, upstream)
            if why is None:
                results[spec.name] = RunResult(
                    spec.name, "skipped", float(rec.get("seconds", 0.0)), dest, parameters=nb_params
                )
                log(f"[hpr run] {spec.name}: up to date, skipped")
                continue
            log(f"[hpr run] {spec.name}: running ({profile} profile): {why}")
            failed_path = base / output_dir / "failed" / f"{spec.name}.ipynb"
            tmp = _files.scratch_file(dest, suffix=".ipynb")  # swept by a later run if this one is killed
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(
                    str(src),
                    str(tmp),
                    parameters=nb_params,
                    kernel_name=kernel,
                    cwd=str(base),
                    progress_bar=False,
                    log_output=False,
                )
            except pm.PapermillExecutionError as exc:
                seconds = time.perf_counter() - t0
                failed_path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, failed_path)
                cell, err = _failure(failed_path)
                err = err or f"{exc.ename}: {exc.evalue}"
                results[spec.name] = RunResult(spec.name, "failed", seconds, failed_path, err, cell, nb_params)
                log(f"[hpr run] {spec.name}: FAILED in code cell {cell}: {err} (see {failed_path})")
                continue
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            seconds = time.perf_counter() - t0
            record = {
                "status": "ok",
                "profile": profile,
                "parameters": nb_params,
                "version": __version__,
                **_resolved_device(nb_params),
                "machine": host,
                "commit": commit,
                "seconds": round(seconds, 2),
                "source_sha256": source_sha,
                "inputs": inputs,
                "inputs_sha256": _files.stable_hash(inputs, 64),
                "out_dir": out_dir,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
            _stamp(tmp, record, dest)
            os.replace(tmp, dest)
            if failed_path.exists():
                failed_path.unlink()
            results[spec.name] = RunResult(spec.name, "ran", seconds, dest, parameters=nb_params)
            log(f"[hpr run] {spec.name}: done in {seconds:.1f} s")
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return [results[s.name] for s in profiles.NOTEBOOKS if s.name in results]


__all__ = ["RunResult", "commit_label", "library_root", "machine", "run_study"]
