"""hpr: Householder Pseudo-Rotation activation editing (Pham & Nguyen, EMNLP 2024).

The whole workflow from the top level, the way the method itself reads::

    import hpr

    model, tok = hpr.load_model("smollm2-135m-instruct")          # or a checkpoint / hub id
    train, val, test = (hpr.load_split("truthfulqa", s) for s in ("train", "val", "test"))
    editors = hpr.train_from_model(model, tok, train, val, k=5)  # capture, train every layer, top 5
    with editors.apply(model):                                     # edit inside the block only
        ...                                                        # model.generate(...), scoring
    editors.save("runs/my-editors"); editors = hpr.EditorSet.load("runs/my-editors", model)
    results = hpr.evaluate(model, tok, "truthfulqa", test, "runs/my-eval", method=editors)
    iti = hpr.fit_method("iti", model=model, tokenizer=tok, train=train, val=val, out="runs/iti")

Names resolve on first use, so ``import hpr`` stays light: it imports torch, not transformers'
models, peft, lm-eval, papermill or matplotlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from hpr.errors import DataError, EditorError, HPRError, ModelError, ParameterError

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # the method
    "HPR": "hpr.editor",
    "EditorSet": "hpr.editor_set",
    "TrainConfig": "hpr.train",
    "train": "hpr.train",
    "train_from_model": "hpr.train",
    "reflect": "hpr.householder",
    "pseudo_rotate": "hpr.householder",
    "angle_between": "hpr.householder",
    # models and activations
    "load_model": "hpr.lm.models",
    "capture": "hpr.lm.capture",
    "Captured": "hpr.lm.activations",
    # data
    "Record": "hpr.data.records",
    "load_split": "hpr.data.datasets",
    "load_splits": "hpr.data.datasets",
    "DATASETS": "hpr.data.records",
    # every method by name
    "METHOD_NAMES": "hpr.methods.registry",
    "parse_method": "hpr.methods.registry",
    "fit_method": "hpr.methods.registry",
    "load_method": "hpr.methods.registry",
    "Unedited": "hpr.methods.base",
    # evaluation
    "evaluate": "hpr.evaluation.evaluate",
    "read_results": "hpr.evaluation.evaluate",
    "score": "hpr.evaluation.scoring",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hpr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "DATASETS",
    "DataError",
    "EditorError",
    "EditorSet",
    "HPR",
    "HPRError",
    "METHOD_NAMES",
    "ModelError",
    "ParameterError",
    "Captured",
    "Record",
    "TrainConfig",
    "Unedited",
    "__version__",
    "angle_between",
    "capture",
    "evaluate",
    "fit_method",
    "load_method",
    "load_model",
    "load_split",
    "load_splits",
    "parse_method",
    "pseudo_rotate",
    "read_results",
    "reflect",
    "score",
    "train",
    "train_from_model",
]
