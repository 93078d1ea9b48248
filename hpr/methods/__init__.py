"""Editing methods: the registry (``REGISTRY``, ``parse_method``, ``load_method``, ``fit_method``),
the shared protocol and saved-method format (``base``), and the baselines: ITI (``iti``; head statistics in ``iti_heads``), Diff
(``diff``; networks and training in ``diff_nets``) and LoRA (``lora``). HPR itself lives at the top of the package (``hpr.editor``,
``hpr.train``)."""

from hpr.methods.base import (
    CONFIG_FILE,
    METHOD_FORMAT,
    EditMethod,
    Unedited,
    check_fingerprint,
    read_method_config,
)
from hpr.methods.registry import (
    FITTABLE,
    HPR_FAMILY,
    HPR_TRAIN_OPTIONS,
    METHOD_NAMES,
    REGISTRY,
    USES_K,
    MethodInfo,
    MethodSpec,
    fit_method,
    load_method,
    method_info,
    methods_help,
    parse_method,
)

__all__ = [
    "CONFIG_FILE",
    "FITTABLE",
    "HPR_FAMILY",
    "HPR_TRAIN_OPTIONS",
    "METHOD_FORMAT",
    "METHOD_NAMES",
    "REGISTRY",
    "USES_K",
    "EditMethod",
    "MethodInfo",
    "MethodSpec",
    "Unedited",
    "check_fingerprint",
    "fit_method",
    "load_method",
    "method_info",
    "methods_help",
    "parse_method",
    "read_method_config",
]
