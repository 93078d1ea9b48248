"""One interface for every editing method: HPR, its ablation, and the baselines.

A method is applied with ``with method.apply(model): ...`` (the edit is removed on exit, also
on exceptions), saved with ``save(dir)`` and loaded with ``Method.load(dir, model=...)``.

``METHOD_NAMES`` lists the rows of the paper's Table 1 (plus ``diff-mse``, the prose reading of
the Diff baseline beside the authors' ``diff``); ``load_method(name, dir, model)`` loads any of
them and ``fit_method(name, ...)`` trains the baselines (ITI, Diff, LoRA). HPR and -AnglePred are
trained by ``hpr.train``. ``parse_method`` reads the full method-name grammar (``iti-200-k48``). Every saved method is a directory with ``config.json``
(format, method name, model fingerprint, options) and safetensors weights; nothing is pickled.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from .architectures import fingerprint, same_model
from .errors import EditorError, ParameterError

#: The rows of the paper's Table 1, in order; ``diff`` is the authors' Diff design, ``diff-mse`` the prose one.
METHOD_NAMES: tuple[str, ...] = ("base", "hpr", "hpr-noangle", "iti", "diff", "diff-mse", "lora", "hpr-unit")
#: Methods that ``fit_method`` trains (HPR and -AnglePred are trained by ``hpr.train``).
FITTABLE: tuple[str, ...] = ("iti", "diff", "diff-mse", "lora")
#: Methods that edit HPR's top-k layers (``k`` applies to them).
USES_K: tuple[str, ...] = ("hpr", "hpr-noangle", "hpr-unit", "diff", "diff-mse")
#: HPR editor sets (trained by ``hpr.train``): the paper's design, its -AnglePred ablation, and our
#: variant whose angle network reads ``sqrt(d) x / |x|`` (``hpr.editor.ANGLE_INPUTS``).
HPR_FAMILY: tuple[str, ...] = ("hpr", "hpr-noangle", "hpr-unit")
#: Training options of each HPR-family name (``hpr.train.TrainConfig`` fields).
HPR_TRAIN_OPTIONS: dict[str, dict[str, Any]] = {"hpr": {}, "hpr-noangle": {}, "hpr-unit": {"angle_input": "unit"}}
#: Diff design of each Diff method name.
DIFF_DESIGN = {"diff": "authors", "diff-mse": "mse"}
CONFIG_FILE = "config.json"
METHOD_FORMAT = "hpr-method/1"


@runtime_checkable
class EditMethod(Protocol):
    """What notebooks and the evaluation loop need from a method."""

    def apply(self, model: nn.Module) -> AbstractContextManager[nn.Module]: ...

    def save(self, directory: str | Path) -> Path: ...


class Base:
    """The unedited model: the identity method."""

    name = "base"

    @contextmanager
    def apply(self, model: nn.Module, check: bool = True) -> Iterator[nn.Module]:
        yield model

    def save(self, directory: str | Path) -> Path:
        from . import io

        out = Path(directory)
        io.write_json(out / "config.json", {"format": "hpr-method/1", "method": "base"})
        return out

    @classmethod
    def load(cls, directory: str | Path, model: Any = None) -> Base:
        return cls()


def read_method_config(directory: str | Path, method: str, also: Sequence[str] = ()) -> dict[str, Any]:
    """Read ``directory/config.json`` of a saved ``method`` (or one of ``also``); ``EditorError``
    if unusable."""
    d = Path(directory)
    path = d / CONFIG_FILE
    if not path.is_file():
        raise EditorError(
            f"{path} is missing; {d} is not a saved {method} method. "
            f"Train it with `hpr train --method {method} --out {d}`"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EditorError(f"{path} is not valid JSON ({exc}); train the {method} method again") from exc
    if not isinstance(cfg, dict) or cfg.get("method") not in (method, *also):
        found = cfg.get("method") if isinstance(cfg, dict) else None
        raise EditorError(
            f"{path} describes method {found!r}, not {method!r}; load it with "
            f"load_method({found!r}, ...) or point to a {method} directory"
        )
    if not isinstance(cfg.get("model"), dict):
        raise EditorError(f"{path} has no model fingerprint ('model' object); train it again")
    return cfg


def check_fingerprint(saved: dict[str, Any], model: nn.Module, method: str) -> None:
    """Refuse ``model`` unless its fingerprint matches the one ``method`` was fitted on."""
    fp = fingerprint(model, saved.get("name"))
    if not same_model(fp, saved):
        raise EditorError(
            f"this {method} method was fitted on {saved} but the model is {fp}; "
            f"fit it for this model (hpr train --method {method} --model ...)"
        )


def _check_name(name: str) -> str:
    if name not in METHOD_NAMES:
        raise ParameterError(f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)} "
                             "(and iti-<alpha>, iti-k<heads>, iti-<alpha>-k<heads>)")
    return name


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name.

    ``family``: a name of ``METHOD_NAMES``; ``load_options``: keywords for ``load_method`` (ITI:
    ``alpha``); ``fit_options``: keywords for ``fit_method`` that change the fitted artifact (ITI:
    ``k``, the number of heads); ``uses_k``: whether HPR's top-k layers apply (hpr, hpr-noangle,
    diff, diff-mse); ``name``: the canonical name (``iti-15`` -> ``iti``).
    """

    family: str
    load_options: dict[str, Any] = field(default_factory=dict)
    fit_options: dict[str, Any] = field(default_factory=dict)
    uses_k: bool = False
    name: str = ""


_ITI = re.compile(r"iti(?:-(?P<alpha>\d+(?:\.\d+)?))?(?:-k(?P<k>\d+))?")


def parse_method(name: str) -> MethodSpec:
    """Parse a method name: a ``METHOD_NAMES`` entry or ``iti[-<alpha>][-k<K>]``.

    ``iti``: alpha 15 (``hpr.iti.DEFAULT_ALPHA``) and the scaled default K (``hpr.iti.default_k``);
    ``iti-200``: alpha 200; ``iti-k48``: K = 48 heads; ``iti-200-k48``: both. Both are load options:
    one ITI fit ranks every head, so all of them share it. ``iti-15`` is ``iti``.
    """
    if not isinstance(name, str):
        raise ParameterError(f"a method name must be a string, got {type(name).__name__}")
    if name in METHOD_NAMES and name != "iti":
        return MethodSpec(name, uses_k=name in USES_K, name=name)
    m = _ITI.fullmatch(name)
    if m is None:
        if name.startswith("iti"):
            raise ParameterError(f"cannot read the ITI method name {name!r}; write iti[-<alpha>][-k<heads>], "
                                 "e.g. iti, iti-200, iti-k48, iti-200-k48")
        _check_name(name)
        raise ParameterError(f"unknown method {name!r}")  # unreachable: _check_name raised
    from .iti import DEFAULT_ALPHA

    alpha = float(m["alpha"]) if m["alpha"] is not None else DEFAULT_ALPHA
    load: dict[str, Any] = {"alpha": alpha}
    if m["k"] is not None:
        if int(m["k"]) < 1:
            raise ParameterError(f"method {name!r}: the number of ITI heads must be at least 1 (iti-k48)")
        load["k"] = int(m["k"])
    canon = "iti" + (f"-{alpha:g}" if alpha != DEFAULT_ALPHA else "") + (f"-k{load['k']}" if "k" in load else "")
    return MethodSpec("iti", load, {}, False, canon)


def load_method(name: str, directory: str | Path | None, model: nn.Module, **kwargs: Any) -> EditMethod:
    """Load the method ``name`` saved in ``directory`` for ``model`` (fingerprint checked).

    ``base`` ignores ``directory``; ``hpr`` loads an ``EditorSet``; ``hpr-noangle`` the same set
    with the angle network switched off (reflection alone); ``hpr-unit`` an ``EditorSet`` whose
    angle network reads unit-RMS input (refused for sets trained otherwise, and vice versa). Keyword options are forwarded to the
    method's ``load`` (e.g. ``alpha=200.0`` for ITI).
    """
    _check_name(name)
    if name == "base":
        return Base()
    if directory is None:
        raise ParameterError(f"method {name!r} needs the directory it was saved in (got None)")
    if kwargs and name != "iti":
        raise ParameterError(f"method {name!r} takes no load options, got {sorted(kwargs)} (only iti: alpha, k)")
    if name == "iti" and set(kwargs) - {"alpha", "k"}:
        raise ParameterError(f"iti takes only the load options alpha and k, got {sorted(kwargs)}")
    if name in HPR_FAMILY:
        from .editor import EditorSet

        es = EditorSet.load(directory, model)
        want = HPR_TRAIN_OPTIONS[name].get("angle_input", "raw")
        have = {e.angle_input for e in es.editors.values()}
        if have != {want}:
            other = "hpr-unit" if "unit" in have else "hpr"
            raise EditorError(f"{directory} holds editors whose angle network reads {sorted(have)} input, "
                              f"not {want!r}: load it as {other!r}, or train {name!r} editors")
        return es.with_angle(False) if name == "hpr-noangle" else es
    if name == "iti":
        from .iti import ITI

        return ITI.load(directory, model, **kwargs)
    if name in DIFF_DESIGN:
        from .diff import Diff

        return Diff.load(directory, model, design=DIFF_DESIGN[name])
    from .lora import LoRA

    return LoRA.load(directory, model, **kwargs)


def fit_method(
    name: str,
    *,
    model: nn.Module,
    tokenizer: Any,
    train: Sequence[Any],
    val: Sequence[Any],
    out: str | Path,
    seed: int = 0,
    dataset: str = "truthfulqa",
    **options: Any,
) -> EditMethod:
    """Fit baseline ``name`` (iti, diff, diff-mse or lora) on ``train`` (model selection on ``val``).

    ``train``/``val`` are lists of ``hpr.records.Record``. The fitted method is saved to ``out``
    (atomic writes) and returned. ``options`` are the method's hyperparameters (see
    ``hpr.iti.fit_iti``, ``hpr.diff.fit_diff``, ``hpr.lora.fit_lora``).
    """
    _check_name(name)
    if name not in FITTABLE:
        raise ParameterError(
            f"fit_method fits {', '.join(FITTABLE)}; {name!r} is "
            + ("the unedited model" if name == "base" else "trained by hpr.train (hpr train --method hpr)")
        )
    if not train:
        raise ParameterError(f"no training records to fit {name!r} on; check the dataset split")
    common = {"model": model, "tokenizer": tokenizer, "train": list(train), "val": list(val),
              "seed": seed, "dataset": dataset}
    method: Any
    start = time.perf_counter()
    if name == "iti":
        from .iti import fit_iti

        method = fit_iti(**common, **options)
    elif name in DIFF_DESIGN:
        from .diff import fit_diff

        if options.get("design", DIFF_DESIGN[name]) != DIFF_DESIGN[name]:
            raise ParameterError(f"method {name!r} is Diff design {DIFF_DESIGN[name]!r}; drop design= "
                                 f"or fit {'diff' if options['design'] == 'authors' else 'diff-mse'!r}")
        method = fit_diff(**common, **{**options, "design": DIFF_DESIGN[name]})
    else:
        from .lora import fit_lora

        method = fit_lora(**common, **options)
    method.config.setdefault("fit_seconds", round(time.perf_counter() - start, 1))
    method.save(out)
    return method  # type: ignore[no-any-return]


__all__ = [
    "METHOD_NAMES", "FITTABLE", "USES_K", "HPR_FAMILY", "HPR_TRAIN_OPTIONS", "EditMethod", "Base", "MethodSpec", "parse_method", "load_method",
    "fit_method", "read_method_config", "check_fingerprint",
]
