"""The method registry: every editing method by name, how to load it, how to fit it.

``REGISTRY`` maps a method family to its ``MethodInfo``: what kind it is (the unedited model, an
HPR editor set trained by ``hpr.train``, or a baseline fitted by its own module), whether HPR's
top-k layers apply, which load options it takes, and the functions that load and fit it.
``METHOD_NAMES`` lists the families (the paper's Table 1 rows, then ours); ``parse_method`` reads
the full name grammar (``iti-200-k48``); ``load_method`` and ``fit_method`` dispatch through the
registry. The CLI, the study and the tables take their method lists from here. Loaders and fitters
import their modules on first use, so ``import hpr.methods`` stays light (no peft, no sklearn).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hpr.errors import EditorError, ParameterError
from hpr.methods.base import EditMethod, Unedited

Loader = Callable[..., EditMethod]
Fitter = Callable[..., EditMethod]


@dataclass(frozen=True)
class MethodInfo:
    """One method family.

    ``kind``: ``"unedited"``, ``"hpr"`` (an editor set trained by ``hpr.train``, with
    ``train_options`` for ``TrainConfig``) or ``"baseline"`` (``fit`` trains it); ``uses_k``:
    whether it edits HPR's top-k layers; ``load_options``: keyword options ``load`` accepts;
    ``summary``: one line for help texts.
    """

    name: str
    kind: str
    summary: str
    load: Loader
    fit: Fitter | None = None
    uses_k: bool = False
    load_options: tuple[str, ...] = ()
    train_options: dict[str, Any] = field(default_factory=dict)


def _load_unedited(directory: Any = None, model: Any = None) -> EditMethod:
    return Unedited()


def _hpr_loader(name: str, angle_input: str, use_angle: bool) -> Loader:
    def load(directory: str | Path, model: nn.Module) -> EditMethod:
        from hpr.editor_set import EditorSet

        es = EditorSet.load(directory, model)
        have = {e.angle_input for e in es.editors.values()}
        if have != {angle_input}:
            other = "hpr-unit" if "unit" in have else "hpr"
            raise EditorError(
                f"{directory} holds editors whose angle network reads {sorted(have)} input, "
                f"not {angle_input!r}: load it as {other!r}, or train {name!r} editors"
            )
        return es if use_angle else es.with_angle(False)

    return load


def _load_iti(directory: str | Path, model: nn.Module, **options: Any) -> EditMethod:
    from hpr.methods.iti import ITI

    return ITI.load(directory, model, **options)


def _fit_iti(**kw: Any) -> EditMethod:
    from hpr.methods.iti import fit_iti

    return fit_iti(**kw)


def _diff_loader(design: str) -> Loader:
    def load(directory: str | Path, model: nn.Module) -> EditMethod:
        from hpr.methods.diff import Diff

        return Diff.load(directory, model, design=design)

    return load


def _diff_fitter(name: str, design: str) -> Fitter:
    def fit(**kw: Any) -> EditMethod:
        from hpr.methods.diff import fit_diff

        if kw.get("design", design) != design:
            raise ParameterError(
                f"method {name!r} is Diff design {design!r}; drop design= "
                f"or fit {'diff' if kw['design'] == 'authors' else 'diff-mse'!r}"
            )
        return fit_diff(**{**kw, "design": design})

    return fit


def _load_lora(directory: str | Path, model: nn.Module) -> EditMethod:
    from hpr.methods.lora import LoRA

    return LoRA.load(directory, model)


def _fit_lora(**kw: Any) -> EditMethod:
    from hpr.methods.lora import fit_lora

    return fit_lora(**kw)


#: Every method family, in the paper's Table 1 order, then ours.
REGISTRY: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("base", "unedited", "the unedited model", _load_unedited),
        MethodInfo(
            "hpr",
            "hpr",
            "Householder pseudo-rotation (the paper's design)",
            _hpr_loader("hpr", "raw", True),
            uses_k=True,
        ),
        MethodInfo(
            "hpr-noangle",
            "hpr",
            "-AnglePred: HPR's editors reflecting instead of rotating",
            _hpr_loader("hpr-noangle", "raw", False),
            uses_k=True,
        ),
        MethodInfo(
            "iti",
            "baseline",
            "inference-time intervention (iti[-<alpha>][-k<heads>])",
            _load_iti,
            _fit_iti,
            load_options=("alpha", "k"),
        ),
        MethodInfo(
            "diff",
            "baseline",
            "Diff, the authors' design (unit-norm Tanh MLP output added)",
            _diff_loader("authors"),
            _diff_fitter("diff", "authors"),
            uses_k=True,
        ),
        MethodInfo(
            "diff-mse",
            "baseline",
            "Diff, the paper's prose design (MSE-trained MLP output added)",
            _diff_loader("mse"),
            _diff_fitter("diff-mse", "mse"),
            uses_k=True,
        ),
        MethodInfo("lora", "baseline", "LoRA fine-tuning (peft)", _load_lora, _fit_lora),
        MethodInfo(
            "hpr-unit",
            "hpr",
            "our HPR variant: the angle network reads sqrt(d) x/|x|",
            _hpr_loader("hpr-unit", "unit", True),
            uses_k=True,
            train_options={"angle_input": "unit"},
        ),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)
#: Methods that ``fit_method`` trains (the HPR family is trained by ``hpr.train``).
FITTABLE: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.fit is not None)
#: Methods that edit HPR's top-k layers (``k`` applies to them).
USES_K: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.uses_k)
#: HPR editor sets: the paper's design, its -AnglePred ablation, and our ``hpr-unit``.
HPR_FAMILY: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.kind == "hpr")
#: Training options of each HPR-family name (``hpr.train.TrainConfig`` fields).
HPR_TRAIN_OPTIONS: dict[str, dict[str, Any]] = {n: dict(REGISTRY[n].train_options) for n in HPR_FAMILY}


def method_info(name: str) -> MethodInfo:
    """The ``MethodInfo`` of family ``name``; ``ParameterError`` naming the valid ones otherwise."""
    if name not in REGISTRY:
        raise ParameterError(
            f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)} "
            "(and iti-<alpha>, iti-k<heads>, iti-<alpha>-k<heads>)"
        )
    return REGISTRY[name]


def methods_help() -> str:
    """``"base (the unedited model), hpr (...), ..."``: the method list for help texts."""
    return ", ".join(f"{n} ({m.summary})" for n, m in REGISTRY.items())


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name.

    ``family``: a name of ``METHOD_NAMES``; ``load_options``: keywords for ``load_method`` (ITI:
    ``alpha`` and ``k``, the number of heads); ``fit_options``: keywords for ``fit_method`` that
    change the fitted artifact (none today: one ITI fit ranks every head); ``uses_k``: whether
    HPR's top-k layers apply; ``name``: the canonical name (``iti-15`` -> ``iti``).
    """

    family: str
    load_options: dict[str, Any] = field(default_factory=dict)
    fit_options: dict[str, Any] = field(default_factory=dict)
    uses_k: bool = False
    name: str = ""

    @property
    def info(self) -> MethodInfo:
        return REGISTRY[self.family]


_ITI = re.compile(r"iti(?:-(?P<alpha>\d+(?:\.\d+)?))?(?:-k(?P<k>\d+))?")


def parse_method(name: str) -> MethodSpec:
    """Parse a method name: a ``METHOD_NAMES`` entry or ``iti[-<alpha>][-k<K>]``.

    ``iti``: alpha 15 (``hpr.methods.iti.DEFAULT_ALPHA``) and the scaled default K
    (``hpr.methods.iti.default_k``); ``iti-200``: alpha 200; ``iti-k48``: K = 48 heads;
    ``iti-200-k48``: both. Both are load options: one ITI fit ranks every head, so all of them
    share it. ``iti-15`` is ``iti``.
    """
    if not isinstance(name, str):
        raise ParameterError(f"a method name must be a string, got {type(name).__name__}")
    if name in REGISTRY and name != "iti":
        return MethodSpec(name, uses_k=REGISTRY[name].uses_k, name=name)
    m = _ITI.fullmatch(name)
    if m is None:
        if name.startswith("iti"):
            raise ParameterError(
                f"cannot read the ITI method name {name!r}; write iti[-<alpha>][-k<heads>], "
                "e.g. iti, iti-200, iti-k48, iti-200-k48"
            )
        method_info(name)
    assert m is not None
    from hpr.methods.iti import DEFAULT_ALPHA

    alpha = float(m["alpha"]) if m["alpha"] is not None else DEFAULT_ALPHA
    load: dict[str, Any] = {"alpha": alpha}
    if m["k"] is not None:
        if int(m["k"]) < 1:
            raise ParameterError(f"method {name!r}: the number of ITI heads must be at least 1 (iti-k48)")
        load["k"] = int(m["k"])
    canon = "iti" + (f"-{alpha:g}" if alpha != DEFAULT_ALPHA else "") + (f"-k{load['k']}" if "k" in load else "")
    return MethodSpec("iti", load, {}, False, canon)


def load_method(name: str, directory: str | Path | None, model: nn.Module, **kwargs: Any) -> EditMethod:
    """Load the method family ``name`` saved in ``directory`` for ``model`` (fingerprint checked).

    ``base`` ignores ``directory``; the HPR family loads an ``EditorSet`` (``hpr-noangle`` with
    the angle network switched off; ``hpr-unit`` refuses sets trained for another angle input, and
    the other way round). Keyword options go to the method's ``load`` (ITI: ``alpha``, ``k``).
    """
    info = method_info(name)
    if info.kind == "unedited":
        return info.load()
    if directory is None:
        raise ParameterError(f"method {name!r} needs the directory it was saved in (got None)")
    extra = set(kwargs) - set(info.load_options)
    if extra:
        allowed = ", ".join(info.load_options) if info.load_options else "none"
        raise ParameterError(f"method {name!r} takes the load options: {allowed}; got {sorted(kwargs)}")
    return info.load(directory, model, **kwargs)


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
    """Fit baseline ``name`` (``FITTABLE``) on ``train`` (model selection on ``val``).

    ``train``/``val`` are lists of ``hpr.data.Record``. The fitted method is saved to ``out``
    (atomic writes) and returned. ``options`` are the method's hyperparameters (see
    ``hpr.methods.iti.fit_iti``, ``hpr.methods.diff.fit_diff``, ``hpr.methods.lora.fit_lora``).
    """
    info = method_info(name)
    if info.fit is None:
        raise ParameterError(
            f"fit_method fits {', '.join(FITTABLE)}; {name!r} is "
            + ("the unedited model" if info.kind == "unedited" else "trained by hpr.train (hpr train --method hpr)")
        )
    if not train:
        raise ParameterError(f"no training records to fit {name!r} on; check the dataset split")
    start = time.perf_counter()
    method: Any = info.fit(
        model=model, tokenizer=tokenizer, train=list(train), val=list(val), seed=seed, dataset=dataset, **options
    )
    method.config.setdefault("fit_seconds", round(time.perf_counter() - start, 1))
    method.save(out)
    return method  # type: ignore[no-any-return]


__all__ = [
    "FITTABLE",
    "HPR_FAMILY",
    "HPR_TRAIN_OPTIONS",
    "METHOD_NAMES",
    "REGISTRY",
    "USES_K",
    "MethodInfo",
    "MethodSpec",
    "fit_method",
    "load_method",
    "method_info",
    "methods_help",
    "parse_method",
]
