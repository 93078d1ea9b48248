"""Run the book's notebooks with papermill: profiles, dependency order, resume, failure reports.

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
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from . import __version__, io
from .errors import ParameterError
from .io import data_fingerprint, has_artifacts, stale_reason


@dataclass(frozen=True)
class NotebookSpec:
    """One notebook of the study and the notebooks whose artifacts it reuses. ``extended``: part of
    the extended study (hours on two cores), run by the ``cpu-extended`` and ``gpu`` profiles only."""

    name: str
    depends: tuple[str, ...] = ()
    extended: bool = False


#: The study, in dependency order.
NOTEBOOKS: tuple[NotebookSpec, ...] = (
    NotebookSpec("03_hpr_training"),
    NotebookSpec("02_probe_accuracy", ("03_hpr_training",)),
    NotebookSpec("04_benchmarks", ("03_hpr_training",)),
    NotebookSpec("05_flip_rates", ("04_benchmarks",)),
    NotebookSpec("01_activation_norms", ("03_hpr_training",)),
    NotebookSpec("06_rotate_activations", ("03_hpr_training",)),
    NotebookSpec("07_extended", ("04_benchmarks",), extended=True),
)

_SMOL = ["smollm2-135m-instruct"]
_BOTH = ["smollm2-135m-instruct", "gemma3-270m"]
#: The paper's Table 1 rows plus Diff's prose design and ITI with honest_llama's 48 heads.
_METHODS = ["base", "lora", "diff", "diff-mse", "iti", "iti-k48", "hpr-noangle", "hpr"]

_COMMON_CPU: dict[str, Any] = {
    "profile": "cpu",
    # The main study (what `make book` runs, sized for 30 minutes on two cores): SmolLM2 only. Gemma-3,
    # hpr-unit, seeds and layer sweeps are in the extended study (profile cpu-extended, notebook 7).
    "models": _SMOL,
    "model": "smollm2-135m-instruct",
    "all_methods_models": _SMOL,
    "methods": _METHODS,
    "flip_methods": ["iti", "iti-200", "hpr"],  # the paper's Table 3 rows
    "dataset": "truthfulqa",
    "data_dir": None,
    "seed": 0,
    "k": 5,
    "out_dir": "runs/book",
    # Test caps and train/val caps: seeded samples stratified by subtask (hpr.data.cap_records).
    "caps": {"bbq": 200, "seq": None, "toxigen": None, "truthfulqa": None},
    "train_caps": {"bbq": 200, "seq": None, "toxigen": None, "truthfulqa": None},
    "max_k": 10,
    "n_generate": 3,
    "fig6_ks": [1, 3, 5, 8],  # Figure 6 at four k values (k = 5 is Table 1's run)
    "table2_models": _SMOL,
    "source": None,  # None: the offline BIG-bench task files (hpr.data); "hub" or "local"
    "add_bos": None,  # None: the tokenizer's default
    "device": "auto",  # "auto": CUDA when available, else CPU (hpr.models.resolve_device)
    "dtype": None,  # None: bfloat16 on CUDA, float32 on CPU (hpr.models.default_dtype)
}

#: Named parameter sets. ``cpu`` (the main study) must finish ``make book`` in 30 minutes on two
#: cores; ``cpu-extended`` runs the extended notebook (every method on both models, three split
#: seeds, HPR one layer at a time on every layer: hours on two cores) into its own ``out_dir``.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": dict(_COMMON_CPU),
    "cpu-extended": {**_COMMON_CPU, "profile": "cpu-extended", "out_dir": "runs/extended", "models": _BOTH,
                     "all_methods_models": _BOTH, "methods": [*_METHODS, "hpr-unit"],
                     "flip_methods": ["iti", "iti-200", "iti-k48", "iti-200-k48", "hpr", "hpr-unit"],
                     "seeds": [0, 1, 2], "seed_models": _SMOL, "layer_sweep_models": _BOTH},
    "gpu": {
        **_COMMON_CPU,
        "profile": "gpu",
        "models": ["meta-llama/Llama-2-7b-chat-hf"],
        "model": "meta-llama/Llama-2-7b-chat-hf",
        "all_methods_models": ["meta-llama/Llama-2-7b-chat-hf"],
        "caps": {"bbq": None, "seq": None, "toxigen": None, "truthfulqa": None},
        "train_caps": {"bbq": None, "seq": None, "toxigen": None, "truthfulqa": None},
        "methods": [*_METHODS, "hpr-unit"],
        "flip_methods": ["iti", "iti-200", "iti-k48", "iti-200-k48", "hpr", "hpr-unit"],
        "max_k": 32,
        "n_generate": 5,
        "fig6_ks": None,
        "table2_models": None,
        "seeds": [0, 1, 2],
        "seed_models": ["meta-llama/Llama-2-7b-chat-hf"],
        "layer_sweep_models": ["meta-llama/Llama-2-7b-chat-hf"],
        "source": "hub",
        "add_bos": False,  # the authors' choice
    },
}
#: Which notebooks a profile runs when no ``--only`` is given: ``main`` (the notebooks that are not
#: ``extended``: what ``make book`` runs), ``extended`` or ``all``.
PROFILE_NOTEBOOKS: dict[str, str] = {"cpu": "main", "cpu-extended": "extended", "gpu": "all"}


def profile_notebooks(profile: str) -> list[str]:
    """The notebooks ``profile`` runs by default, in dependency order (see ``PROFILE_NOTEBOOKS``)."""
    tier = PROFILE_NOTEBOOKS.get(profile, "main")
    return [s.name for s in NOTEBOOKS if tier == "all" or s.extended == (tier == "extended")]


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


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["k=3", "models=[\"a\"]"]`` -> ``{"k": 3, "models": ["a"]}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"bad parameter {item!r}: write key=value, e.g. -p k=3")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def profile_parameters(profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters of ``profile`` with ``overrides`` applied. ``model=X`` also sets every list of
    models that is not given (``models``, ``all_methods_models``, ``seed_models``, ``layer_sweep_models``
    where the profile has one)."""
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    params = dict(PROFILES[profile])
    over = dict(overrides or {})
    if "model" in over:
        over.setdefault("models", [over["model"]])
        over.setdefault("all_methods_models", [over["model"]])
        for key in ("seed_models", "layer_sweep_models"):
            if params.get(key):
                over.setdefault(key, [over["model"]])
    params.update(over)
    return params


def git_commit(root: Path) -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=20).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def declared_parameters(path: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters``."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            names = set()
            for line in cell.source.splitlines():
                head = line.split("=", 1)[0].split(":", 1)[0].strip()
                if "=" in line and head.isidentifier():
                    names.add(head)
            return names
    raise ParameterError(f"{path} has no cell tagged 'parameters'; tag one so papermill can inject values")


def parameter_defaults(path: Path) -> dict[str, Any]:
    """Name -> default value of the notebook's ``parameters`` cell (``...`` when not a literal)."""
    import ast

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError as exc:
                raise ParameterError(f"the parameters cell of {path} is not valid Python ({exc}); fix it") from exc
            out: dict[str, Any] = {}
            for node in tree.body:
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    try:
                        value = ast.literal_eval(node.value)
                    except ValueError:
                        value = ...
                    for t in targets:
                        if isinstance(t, ast.Name):
                            out[t.id] = value
            return out
    raise ParameterError(f"{path} has no cell tagged 'parameters'; tag one so papermill can inject values")


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or default is ...:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, type(default))


#: Parameters whose ``None`` default stands for a list: the type of the list's items.
_LISTS: dict[str, type] = {"fig6_ks": int, "table2_models": str, "models": str, "all_methods_models": str,
                           "methods": str, "seeds": int, "layer_sweep_models": str, "seed_models": str,
                           "seed_methods": str, "layer_sweep_methods": str, "flip_methods": str}
#: Smallest item of an integer list parameter (default 1).
_LIST_MIN: dict[str, int] = {"seeds": 0}


def _list_ok(name: str, value: Any) -> bool:
    item = _LISTS[name]

    def ok(v: Any) -> bool:
        if item is int:
            return isinstance(v, int) and not isinstance(v, bool) and v >= _LIST_MIN.get(name, 1)
        return isinstance(v, item)

    return value is None or (isinstance(value, list) and all(ok(v) for v in value))


#: Parameters with a fixed set of values: a pattern their JSON form must match.
_CHOICES: dict[str, re.Pattern[str]] = {
    "source": re.compile(r'null|"(bigbench|hub|local)"'),
    "add_bos": re.compile(r"null|true|false"),
    "device": re.compile(r'"(auto|cpu|mps|cuda(:[0-9]+)?)"'),
    "dtype": re.compile(r'null|"(float32|bfloat16|float16)"'),
}


def validate_parameters(notebook: str | Path, params: Mapping[str, Any]) -> None:
    """Refuse (``ParameterError``) names the notebook does not declare and values whose type
    differs from the declared default (int is accepted for a float; a ``None`` default takes any)."""
    import difflib

    path = Path(notebook)
    defaults = parameter_defaults(path)
    for name, value in params.items():
        if name not in defaults:
            close = difflib.get_close_matches(name, list(defaults), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ParameterError(
                f"unknown parameter {name!r} for {path.name}; {hint}known parameters: {sorted(defaults)}"
            )
        default = defaults[name]
        if name in _LISTS and not _list_ok(name, value):
            low = _LIST_MIN.get(name, 1)
            kind, example = ((f"integers >= {low}", f"[{low}, {low + 1}]") if _LISTS[name] is int
                             else ("strings", '["a", "b"]'))
            raise ParameterError(f"parameter {name!r} must be a JSON list of {kind} (or null), got "
                                 f"{value!r}; e.g. -p '{name}={example}'")
        if name in _CHOICES and not _CHOICES[name].fullmatch(json.dumps(value)):
            raise ParameterError(f"parameter {name!r} got {value!r}; allowed: {_CHOICES[name].pattern}, "
                                 f"e.g. -p {name}={json.dumps(PROFILES['cpu'].get(name))}")
        if not _type_ok(default, value):
            want = "a number" if isinstance(default, float) else type(default).__name__
            raise ParameterError(
                f"parameter {name!r} must be {want} (like its default {default!r}), got "
                f"{type(value).__name__} {value!r}; pass a JSON value, e.g. -p {name}={json.dumps(default)}"
            )


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


def _stamp(path: Path, record: Mapping[str, Any]) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["hpr"] = dict(record)
    params = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sorted(record["parameters"].items()))
    text = (
        "**Run record.** "
        f"profile `{record['profile']}`; hpr {record['version']}; git commit `{record['commit']}`; "
        + (f"device `{record['device']}`, dtype `{record['dtype']}`; " if record.get("device") else "")
        + f"run time {record['seconds']:.1f} s; finished {record['finished']}.\n\nParameters: {params}."
    )
    cell = nbformat.v4.new_markdown_cell(text, metadata={"tags": ["hpr-run-record"]})
    nb.cells = [c for c in nb.cells if "hpr-run-record" not in c.get("metadata", {}).get("tags", [])]
    nb.cells.append(cell)
    with io.atomic_path(path) as tmp:
        nbformat.write(nb, str(tmp))


def _resolved_device(params: Mapping[str, Any]) -> dict[str, str]:
    """``{"device": "cuda", "dtype": "torch.bfloat16"}``: what the notebook's ``device``/``dtype``
    parameters resolve to on this machine (``hpr.models``), for the run record; empty when it has none."""
    if "device" not in params and "dtype" not in params:
        return {}
    from .models import resolve_device, resolve_dtype

    dev = params.get("device", "auto")
    return {"device": str(resolve_device(dev)), "dtype": str(resolve_dtype(params.get("dtype"), dev)).removeprefix("torch.")}


def library_root() -> Path:
    """The installed ``hpr`` package folder: the sources whose hash keys every run."""
    return Path(__file__).resolve().parent


def _wants_hub(params: Mapping[str, Any]) -> bool:
    """Whether the run reads the Hugging Face hub: ``source=hub`` or a model spec like ``org/name``."""
    specs = [params.get("model"), *(params.get("models") or [])]
    hub_ids = [m for m in specs if isinstance(m, str) and "/" in m and not m.startswith(("/", ".", "~"))
               and not Path(m).expanduser().exists()]
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
    import papermill as pm

    base = Path(root).resolve()
    params = profile_parameters(profile, overrides)
    names = [s.name for s in NOTEBOOKS]
    wanted = set(only) if only else set(profile_notebooks(profile))
    unknown = wanted - set(names)
    if unknown:
        raise ParameterError(f"unknown notebook(s) {sorted(unknown)}; choose from {names}")
    known: set[str] = set()
    for spec in NOTEBOOKS:
        src = base / source_dir / f"{spec.name}.ipynb"
        if spec.name in wanted and src.is_file():  # check every notebook before running any
            declared_here = declared_parameters(src)
            known |= declared_here
            validate_parameters(src, {k: v for k, v in params.items() if k in declared_here})
    unknown_over = sorted(set(overrides or {}) - known)
    if unknown_over and known:
        raise ParameterError(f"unknown parameter(s) {unknown_over}: no notebook declares them; "
                             f"known parameters: {sorted(known)}")
    commit = git_commit(base)
    library = io.tree_digest(lib_root if lib_root is not None else library_root())
    data = data_fingerprint(params, base)
    results: dict[str, RunResult] = {}
    env_backup = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MPLBACKEND")}
    if profile != "gpu" and not _wants_hub(params):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        for spec in NOTEBOOKS:
            if spec.name not in wanted:
                continue
            src = base / source_dir / f"{spec.name}.ipynb"
            dest = base / output_dir / f"{spec.name}.ipynb"
            if not src.is_file():
                raise ParameterError(f"{src} is missing; the study needs every notebook in {names}")
            declared = declared_parameters(src)
            nb_params = {k: v for k, v in params.items() if k in declared}
            source_sha = io.file_sha256(src)
            blocked = [d for d in spec.depends if results.get(d) and results[d].status in {"failed", "blocked"}]
            if blocked:
                results[spec.name] = RunResult(spec.name, "blocked", error=f"depends on failed {blocked}")
                log(f"[hpr run] {spec.name}: skipped, depends on failed {blocked}")
                continue
            rec = _record(dest) if dest.is_file() else {}
            inputs = {"library": library, "notebook": source_sha, "data": data,
                      "parameters": io.stable_hash(json.loads(json.dumps(nb_params)), 64)}
            out_dir = str(params.get("out_dir") or "runs/book")
            upstream = [d for d in spec.depends if results.get(d) and results[d].status == "ran"]
            why = "--force" if force else stale_reason(rec, inputs, out_dir, base, upstream)
            if why is None:
                results[spec.name] = RunResult(spec.name, "skipped", float(rec.get("seconds", 0.0)), dest,
                                               parameters=nb_params)
                log(f"[hpr run] {spec.name}: up to date, skipped")
                continue
            log(f"[hpr run] {spec.name}: running ({profile} profile): {why}")
            failed_path = base / output_dir / "failed" / f"{spec.name}.ipynb"
            tmp = dest.with_name(f".{spec.name}.running.ipynb")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(str(src), str(tmp), parameters=nb_params, kernel_name=kernel,
                                    cwd=str(base), progress_bar=False, log_output=False)
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
            record = {"status": "ok", "profile": profile, "parameters": nb_params, "version": __version__,
                      **_resolved_device(nb_params),
                      "commit": commit, "seconds": round(seconds, 2), "source_sha256": source_sha,
                      "inputs": inputs, "inputs_sha256": io.stable_hash(inputs, 64), "out_dir": out_dir,
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            _stamp(tmp, record)
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
    return [results[s.name] for s in NOTEBOOKS if s.name in results]


__all__ = ["NOTEBOOKS", "PROFILES", "PROFILE_NOTEBOOKS", "NotebookSpec", "profile_notebooks", "RunResult", "data_fingerprint", "declared_parameters",
           "git_commit", "has_artifacts", "library_root", "parameter_defaults", "parse_overrides",
           "profile_parameters", "run_study", "stale_reason", "validate_parameters"]
