"""The study's notebooks (in dependency order), its parameter profiles, and the checks every
parameter passes before anything runs.

``NOTEBOOKS`` lists the notebooks; ``extended`` ones form the extended study. ``PROFILES`` names
parameter sets: ``cpu`` (the main study, what ``make book`` runs: 30 minutes on two cores),
``cpu-extended`` (notebook 7: hours on two cores, its own ``out_dir``) and ``gpu`` (every
notebook, a hub model, the paper's data); ``PROFILE_NOTEBOOKS`` says which notebooks each runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from hpr.errors import ParameterError


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
    # Test caps and train/val caps: seeded samples stratified by subtask (hpr.data.datasets.cap_records).
    "caps": {"bbq": 200, "seq": None, "toxigen": None, "truthfulqa": None},
    "train_caps": {"bbq": 200, "seq": None, "toxigen": None, "truthfulqa": None},
    "max_k": 10,
    "n_generate": 3,
    "fig6_ks": [1, 3, 5, 8],  # Figure 6 at four k values (k = 5 is Table 1's run)
    "table2_models": _SMOL,
    "source": None,  # None: the offline BIG-bench task files (hpr.data.datasets); "hub" or "local"
    "add_bos": None,  # None: the tokenizer's default
    "device": "auto",  # "auto": CUDA when available, else CPU (hpr.lm.models.resolve_device)
    "dtype": None,  # None: bfloat16 on CUDA, float32 on CPU (hpr.lm.models.default_dtype)
    "device_map": None,  # "auto": blocks spread over the GPUs (and the CPU), for models larger than one GPU
}

#: Named parameter sets. ``cpu`` (the main study) must finish ``make book`` in 30 minutes on two
#: cores; ``cpu-extended`` runs the extended notebook (every method on both models, three split
#: seeds, HPR one layer at a time on every layer: hours on two cores) into its own ``out_dir``.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": dict(_COMMON_CPU),
    "cpu-extended": {
        **_COMMON_CPU,
        "profile": "cpu-extended",
        "out_dir": "runs/extended",
        "models": _BOTH,
        "all_methods_models": _BOTH,
        "methods": [*_METHODS, "hpr-unit"],
        "flip_methods": ["iti", "iti-200", "iti-k48", "iti-200-k48", "hpr", "hpr-unit"],
        "seeds": [0, 1, 2],
        "seed_models": _SMOL,
        "layer_sweep_models": _BOTH,
    },
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
        "side_effect_tasks": ["hellaswag", "mmlu"],  # notebook 7: what the edit costs on general benchmarks
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
_LISTS: dict[str, type] = {
    "fig6_ks": int,
    "table2_models": str,
    "models": str,
    "all_methods_models": str,
    "methods": str,
    "seeds": int,
    "layer_sweep_models": str,
    "seed_models": str,
    "seed_methods": str,
    "layer_sweep_methods": str,
    "flip_methods": str,
    "side_effect_tasks": str,
    "side_effect_methods": str,
}
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
    "device_map": re.compile(r'null|"(auto|balanced|balanced_low_0|sequential)"'),
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
            kind, example = (
                (f"integers >= {low}", f"[{low}, {low + 1}]") if _LISTS[name] is int else ("strings", '["a", "b"]')
            )
            raise ParameterError(
                f"parameter {name!r} must be a JSON list of {kind} (or null), got {value!r}; e.g. -p '{name}={example}'"
            )
        if name in _CHOICES and not _CHOICES[name].fullmatch(json.dumps(value)):
            raise ParameterError(
                f"parameter {name!r} got {value!r}; allowed: {_CHOICES[name].pattern}, "
                f"e.g. -p {name}={json.dumps(PROFILES['cpu'].get(name))}"
            )
        if not _type_ok(default, value):
            want = "a number" if isinstance(default, float) else type(default).__name__
            raise ParameterError(
                f"parameter {name!r} must be {want} (like its default {default!r}), got "
                f"{type(value).__name__} {value!r}; pass a JSON value, e.g. -p {name}={json.dumps(default)}"
            )


__all__ = [
    "NOTEBOOKS",
    "PROFILES",
    "PROFILE_NOTEBOOKS",
    "NotebookSpec",
    "declared_parameters",
    "parameter_defaults",
    "parse_overrides",
    "profile_notebooks",
    "profile_parameters",
    "validate_parameters",
]
