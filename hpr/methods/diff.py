"""Diff: per-layer feed-forward networks that push a negative activation towards its positive.

Two designs, one class (``Diff``), recorded as ``design`` in the saved config:

``"authors"`` (method ``diff``): the authors' public code (github VinAIResearch/HPR,
``activation_editing/model/guidance/linear.py``, ``loss_fnc.py: mse_loss``, ``base.py``): an MLP of
``depth`` (default 2) linear layers of width d with Tanh after every layer, the last included, so
each output coordinate is in [-1, 1]; trained with MSE on the pairs' **negatives** only, target
``a_pos - a_neg``, plus ``lambda_p * mean |f(a_pos)|`` when ``lambda_p`` is set (off by default; the
authors' code adds it as ``loss += loss + lambda_p * reg``, which also doubles the MSE term: here
it is ``mse + lambda_p * reg``). At inference the output is normalised to unit length and added
with alpha 1: ``a + f(a) / |f(a)|`` (nothing is added where ``f(a) = 0``).

``"mse"`` (method ``diff-mse``; this library's reading of the paper's prose): the HPR angle
network's widths (``angle_widths(d, 4)[:-1]`` = d, d/2, d/4, d/8, then a d-wide output) with GELU
between layers, trained with MSE to map a negative ``a`` to ``a_pos - a`` and a paired positive to
0; at inference ``a + f(a)``, unbounded, added as is. Saved Diff folders without ``design`` are this.

Both: pairs are HPR's (``hpr.lm.capture.Captured.pairs``); the edit is computed in float32 and
returned in the model's dtype, at every position, for the edited layers. Layers: ``layers=[...]``
or ``editors_dir=`` a saved HPR ``EditorSet`` (its ``selected`` layers, as the authors edit; what
``hpr.study.store`` does), else the ``k`` best layers by validation score (``authors``: mean cosine of
``f(a_neg)`` and ``a_pos - a_neg``, the direction that is added; ``mse``: ``1 - MSE(f) / MSE(0)``).
All layers train together (stacked networks, batched matmuls, gradients clipped per layer).
Training: AdamW lr 5e-4, 5% warmup, 5 epochs, batch 16; ``authors``: linear decay, no weight
decay, clipping at 1.0 (the authors' Trainer defaults, as ``hpr.train``); ``mse``: cosine decay,
weight decay 0.01, no clipping. The last epoch is kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from hpr import _files
from hpr.errors import EditorError, ParameterError
from hpr.lm.architectures import fingerprint, hidden_size
from hpr.lm.hooks import edit_block_outputs
from hpr.methods.base import METHOD_FORMAT, check_fingerprint, read_method_config
from hpr.methods.diff_nets import (
    DEFAULT_DEPTH,
    METHOD_OF,
    TRAINING,
    _check_design,
    diff_net,
    train_stacked,
    training_rows,
    val_cosine,
    val_improvement,
)

WEIGHTS_FILE = "diff.safetensors"
DEFAULT_TOP_K = 5


class _AddDelta:
    """The edit ``a -> a + f(a)`` (``unit``: ``a + f(a) / |f(a)|``), in float32, in ``a``'s dtype."""

    def __init__(self, net: nn.Module, unit: bool) -> None:
        self.net = net
        self.unit = unit

    def __call__(self, a: Tensor) -> Tensor:
        first = next(self.net.parameters())
        if first.device != a.device:
            self.net.to(a.device)
        with torch.no_grad():
            af = a.float()
            delta = self.net(af)
            if self.unit:
                delta = delta / delta.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            return (af + delta).to(a.dtype)


class Diff:
    """Per-layer Diff networks for one model; ``layers`` are the edited blocks, ``design`` is
    ``"authors"`` (method ``diff``) or ``"mse"`` (method ``diff-mse``), ``depth`` its linear layers."""

    def __init__(
        self,
        nets: Mapping[int, nn.Module],
        model: Mapping[str, Any],
        layers: Sequence[int] | None = None,
        config: Mapping[str, Any] | None = None,
        angle_layers: int | None = None,
        design: str = "mse",
    ) -> None:
        if not nets:
            raise EditorError("a Diff method needs at least one layer network")
        self.design = _check_design(design)
        self.nets = {int(k): v.float().eval() for k, v in sorted(nets.items())}
        self.model = dict(model)
        self.layers = [int(i) for i in (layers if layers is not None else self.nets)]
        missing = [i for i in self.layers if i not in self.nets]
        if missing:
            raise EditorError(f"Diff layers {missing} have no trained network")
        self.config = dict(config or {})
        self.angle_layers = DEFAULT_DEPTH[design] if angle_layers is None else int(angle_layers)
        first = next(m for m in next(iter(self.nets.values())).modules() if isinstance(m, nn.Linear))
        self.hidden_size = int(first.in_features)

    @property
    def name(self) -> str:
        return METHOD_OF[self.design]

    def check_model(self, model: nn.Module) -> None:
        check_fingerprint(self.model, model, self.name)
        if hidden_size(model) != self.hidden_size:
            raise EditorError(f"Diff networks have d={self.hidden_size}, the model d={hidden_size(model)}")

    @contextmanager
    def apply(self, model: nn.Module, check: bool = True) -> Iterator[nn.Module]:
        """Replace block outputs ``a`` by ``a + f(a)`` (``authors``: ``a + f(a)/|f(a)|``) at the
        edited layers, at every position."""
        if check:
            self.check_model(model)
        unit = self.design == "authors"
        with edit_block_outputs(model, {i: _AddDelta(self.nets[i], unit) for i in self.layers}):
            yield model

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        tensors = {f"layer{i}.{k}": v for i, net in self.nets.items() for k, v in net.state_dict().items()}
        _files.save_tensors(out / WEIGHTS_FILE, tensors, {"format": METHOD_FORMAT})
        skip = {"model", "layers", "trained_layers", "design"}
        cfg = {
            **{k: v for k, v in self.config.items() if k not in skip},
            "format": METHOD_FORMAT,
            "method": self.name,
            "design": self.design,
            "hidden_size": self.hidden_size,
            "angle_layers": self.angle_layers,
            "trained_layers": sorted(self.nets),
            "layers": self.layers,
            "model": self.model,
        }
        _files.write_json(out / "config.json", cfg)
        return out

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module | None = None, design: str | None = None) -> Diff:
        """Load a saved Diff (either design; folders without ``design`` are ``mse``). ``design``:
        refuse a folder of the other design."""
        cfg = read_method_config(directory, "diff", also=("diff-mse",))
        found = cfg.get("design", "mse")
        if design is not None and found != _check_design(design):
            raise EditorError(
                f"{directory} holds a Diff of design {found!r} (method {METHOD_OF.get(found)}); "
                f"load it as {METHOD_OF.get(found)!r} or fit {METHOD_OF[design]!r} again"
            )
        path = Path(directory) / WEIGHTS_FILE
        try:
            t = load_file(str(path))
            d, depth = int(cfg["hidden_size"]), int(cfg["angle_layers"])
            nets = {}
            for i in cfg["trained_layers"]:
                net = diff_net(d, depth, found)
                prefix = f"layer{int(i)}."
                net.load_state_dict({k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)})
                nets[int(i)] = net
            out = cls(nets, cfg["model"], cfg["layers"], cfg, depth, found)
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError, ParameterError) as exc:
            raise EditorError(f"{path} or its config is missing or unreadable ({exc}); fit Diff again") from exc
        if model is not None:
            out.check_model(model)
        return out


def _resolve_layers(model: nn.Module, layers: Sequence[int] | None, editors_dir: str | Path | None) -> list[int] | None:
    if layers is not None and editors_dir is not None:
        raise ParameterError("give Diff either layers or editors_dir, not both")
    if editors_dir is not None:
        from hpr.editor_set import EditorSet

        return list(EditorSet.load(editors_dir, model).selected)
    return [int(i) for i in layers] if layers is not None else None


def fit_diff(
    *,
    model: nn.Module,
    tokenizer: Any,
    train: Sequence[Any],
    val: Sequence[Any],
    seed: int = 0,
    dataset: str = "truthfulqa",
    design: str = "authors",
    layers: Sequence[int] | None = None,
    editors_dir: str | Path | None = None,
    k: int = DEFAULT_TOP_K,
    angle_layers: int | None = None,
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 5e-4,
    lambda_p: float | None = None,
    training: Mapping[str, Any] | None = None,
    prompt_format: str | None = None,
    progress: bool = True,
) -> Diff:
    """Capture activations (``hpr.lm.capture``, cached), train Diff networks, pick the layers.

    ``design``: ``"authors"`` or ``"mse"``; ``angle_layers``: the network depth (default 2 /
    4); ``lambda_p``: the positives' norm penalty (``authors``; off by default); ``training``:
    overrides of ``TRAINING[design]`` (``schedule``, ``weight_decay``, ``grad_clip``).
    """
    from hpr.data.prompts import DEFAULT_FORMAT
    from hpr.lm.capture import capture

    depth = DEFAULT_DEPTH[_check_design(design)] if angle_layers is None else int(angle_layers)
    unknown = set(training or {}) - set(TRAINING[design])
    if unknown:
        raise ParameterError(f"unknown Diff training option(s) {sorted(unknown)}; known: {sorted(TRAINING[design])}")
    opts = {**TRAINING[design], **(training or {})}
    fmt = prompt_format or DEFAULT_FORMAT
    chosen = _resolve_layers(model, layers, editors_dir)
    # Every layer is captured (the capture HPR's training already cached, same key), then the
    # chosen layers are kept: no second pass over the data for Diff.
    kw: dict[str, Any] = {"prompt_format": fmt, "seed": seed, "progress": progress, "dataset": dataset}

    def layers_of(c: Any) -> Any:
        return c if chosen is None else c.subset_layers(chosen)

    cap = layers_of(capture(model, tokenizer, train, split="train", **kw))
    neg, pos = cap.pairs()
    src, tgt = training_rows(neg, pos, design)
    net = train_stacked(
        cap.data,
        src,
        tgt,
        angle_layers=depth,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=progress,
        design=design,
        lambda_p=lambda_p,
        **opts,
    )
    score_fn, score_name = (
        (val_cosine, "val_cosine") if design == "authors" else (val_improvement, "val_mse_improvement")
    )
    score: dict[int, float] = {}
    if val:
        vcap = layers_of(capture(model, tokenizer, val, split="val", **kw))
        vneg, vpos = vcap.pairs()
        vsrc, vtgt = training_rows(vneg, vpos, design)
        if len(vsrc):
            vals = score_fn(net, vcap.data, vsrc, vtgt)
            score = {layer: float(vals[j]) for j, layer in enumerate(cap.layers)}
    if chosen is None:
        if not score:
            raise ParameterError(
                f"Diff picks layers by {score_name}; the val split gave no pairs (give layers= or editors_dir=)"
            )
        if not 1 <= k <= len(cap.layers):
            raise ParameterError(f"Diff k must be in 1..{len(cap.layers)}, got {k}")
        chosen = sorted(cap.layers, key=lambda i: (-score[i], i))[:k]
    d = cap.hidden_size
    nets = {layer: net.unstack(j, d, depth) for j, layer in enumerate(cap.layers)}
    config = {
        "dataset": dataset,
        "seed": seed,
        "k": len(chosen),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "lambda_p": lambda_p,
        **opts,
        "prompt_format": fmt,
        "n_train_rows": len(src),
        "n_pairs": len(neg),
        score_name: {str(i): v for i, v in score.items()},
        "editors_dir": str(editors_dir) if editors_dir is not None else None,
    }
    return Diff(nets, fingerprint(model), chosen, config, depth, design)


__all__ = ["DEFAULT_TOP_K", "Diff", "fit_diff"]
