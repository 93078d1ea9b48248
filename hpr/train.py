"""Train HPR editors for every captured layer at once, and pick the best layers.

Per layer, with activations ``a`` of hidden size ``d`` (``hpr.lm.capture``): the training
examples are the pairs ``(a_neg, a_pos)`` of ``Captured.pairs`` and, per batch of pairs, both
members. Loss per layer = BCE(p(a), label) + MSE(theta(a), target), averaged over the batch's
``2 B`` activations: label 0 / target ``angle(a_neg, a_pos)`` (radians) for the negative of a
pair, label 1 / target 0 for the positive. AdamW, lr 5e-4, 5% warmup, 5 epochs, batch 16 pairs.

The default ``TrainConfig`` (preset ``"authors"``) is how the authors' public code trains
(github VinAIResearch/HPR, ``activation_editing/``): ``script/train_guidance_householder.sh``
runs ``train_guidance.py`` (a ``transformers`` Trainer, ``trainer/trainer.py``) with lr 5e-4,
``warmup_ratio 0.05``, 5 epochs, batch 16, ``evaluation_strategy epoch``,
``load_best_model_at_end True`` and ``metric_for_best_model lr_acc`` (the probe accuracy of
``model/guidance/householder.py: householder_evaluation_metrics``), and leaves the Trainer's
defaults for the rest: ``lr_scheduler_type linear``, ``weight_decay 0.0``, ``max_grad_norm 1.0``
(applied in ``trainer/trainer.py``'s training loop). So: a **linear** decay after the warmup (the
paper's text says cosine), no weight decay, gradient clipping at 1.0, and the **best epoch** by
mean validation probe accuracy over all layers. Preset ``"cosine"`` is this library's earlier
reading of the paper's prose: cosine decay, weight decay 0.01, no clipping, the last epoch.

All layers are trained together: their weights are stacked (``StackedHPR``, leading dimension
L) and applied with batched matmuls, so one pass over the data per epoch trains L editors. The
summed loss gives each layer exactly its own gradient, AdamW is elementwise, and gradients are
clipped per layer (each layer's own norm), so this equals L independent trainings with the same
batches. (The authors train all layers as one Trainer model, so their clipping acts on the norm
over all layers at once; per-layer clipping keeps the layers independent.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from hpr._nn import SCHEDULES, adamw, clip_grad_norm_per_layer, lr_schedule
from hpr.data.prompts import DEFAULT_FORMAT
from hpr.data.records import Record
from hpr.editor import ANGLE_INPUTS, HPR
from hpr.editor_set import EditorSet
from hpr.errors import DataError, ParameterError
from hpr.householder import angle_between
from hpr.lm.capture import SHARED_THRESHOLD, Captured, capture
from hpr.stacked import StackedHPR

KEEP = ("best", "last")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the authors' code (see the module docstring).

    ``batch_size`` counts pairs; ``warmup`` is a fraction of all steps; ``schedule``: learning-rate
    decay after the warmup, ``"linear"`` or ``"cosine"`` (``lr_schedule``); ``grad_clip``: maximum
    gradient norm per layer (None: no clipping); ``keep``: ``"best"`` epoch by mean validation probe
    accuracy over all layers, or ``"last"``; ``angle_input``: what the angle network reads
    (``hpr.editor.ANGLE_INPUTS``: ``"raw"``, the paper's design, or ``"unit"``, the ``hpr-unit``
    variant). ``TRAIN_PRESETS`` / ``TrainConfig.preset(name)`` name
    the two configurations.
    """

    lr: float = 5e-4
    epochs: int = 5
    batch_size: int = 16
    warmup: float = 0.05
    weight_decay: float = 0.0
    angle_layers: int = 4
    seed: int = 0
    k: int = 5
    threshold: float = SHARED_THRESHOLD
    schedule: str = "linear"
    grad_clip: float | None = 1.0
    keep: str = "best"
    angle_input: str = "raw"

    @staticmethod
    def preset(name: str, **overrides: Any) -> TrainConfig:
        """The named configuration (``"authors"`` or ``"cosine"``) with ``overrides`` applied."""
        if name not in TRAIN_PRESETS:
            raise ParameterError(f"unknown training preset {name!r}; known: {', '.join(TRAIN_PRESETS)}")
        return replace(TRAIN_PRESETS[name], **overrides)

    def check(self) -> None:
        bad = []
        if not self.lr > 0:
            bad.append(f"lr must be > 0 (got {self.lr})")
        if self.epochs < 1:
            bad.append(f"epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            bad.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if not 0 <= self.warmup < 1:
            bad.append(f"warmup must be in [0, 1) (got {self.warmup})")
        if self.weight_decay < 0:
            bad.append(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if self.k < 1:
            bad.append(f"k must be >= 1 (got {self.k})")
        if not 0 < self.threshold <= 1:
            bad.append(f"threshold must be in (0, 1] (got {self.threshold})")
        if self.schedule not in SCHEDULES:
            bad.append(f"schedule must be one of {SCHEDULES} (got {self.schedule!r})")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad.append(f"grad_clip must be > 0 or None for no clipping (got {self.grad_clip})")
        if self.keep not in KEEP:
            bad.append(f"keep must be one of {KEEP} (got {self.keep!r})")
        if self.angle_input not in ANGLE_INPUTS:
            bad.append(f"angle_input must be one of {ANGLE_INPUTS} (got {self.angle_input!r})")
        if bad:
            raise ParameterError("invalid training parameters: " + "; ".join(bad))


#: ``"authors"``: the authors' training script (the default); ``"cosine"``: the paper's prose reading
#: this library used before (cosine decay, weight decay 0.01, no clipping, last epoch).
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "authors": TrainConfig(),
    "cosine": TrainConfig(schedule="cosine", weight_decay=0.01, grad_clip=None, keep="last"),
}


def pair_targets(cap: Captured, neg: Tensor, pos: Tensor, chunk: int = 8192) -> Tensor:
    """``angle(a_neg, a_pos)`` per layer and pair, radians, shape ``(L, P)``."""
    out = torch.empty(len(cap.layers), len(neg))
    for j in range(len(cap.layers)):
        x = cap.data[j]
        for s in range(0, len(neg), chunk):
            out[j, s : s + chunk] = angle_between(x[neg[s : s + chunk]], x[pos[s : s + chunk]])
    return out


def _pair_rows(cap: Captured, threshold: float) -> tuple[Tensor, Tensor]:
    neg, pos = cap.pairs(threshold)
    if len(neg) == 0:
        raise DataError(
            "the validation activations give no pairs; each question needs a correct and an incorrect answer"
        )
    return neg, pos


@torch.no_grad()
def probe_accuracy(model: StackedHPR, cap: Captured, threshold: float = SHARED_THRESHOLD, chunk: int = 2048) -> Tensor:
    """Per-layer probe accuracy ``(L,)`` on the distinct rows of ``cap``'s pairs (answer tokens
    outside the shared prefix); rows move to the model's device chunk by chunk."""
    neg, pos = _pair_rows(cap, threshold)
    dev = model.probe.device
    rows = torch.unique(torch.cat([neg, pos]))
    correct = torch.zeros(len(cap.layers))
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        logits, _ = model(cap.data[:, r].to(dev, torch.float32))
        correct += ((logits > 0).long().cpu() == cap.label[r]).float().sum(1)
    return correct / len(rows)


@torch.no_grad()
def evaluate(
    model: StackedHPR, cap: Captured, threshold: float = SHARED_THRESHOLD, chunk: int = 2048
) -> dict[str, Tensor]:
    """Per-layer validation metrics, each of shape ``(L,)``.

    ``accuracy``: ``probe_accuracy``; ``angle_error``: mean |theta - target| in radians over the
    pairs' negatives (target angle(a_neg, a_pos)) and positives (target 0); ``loss``: the training loss.
    """
    neg, pos = _pair_rows(cap, threshold)
    target = pair_targets(cap, neg, pos)
    L = len(cap.layers)
    dev = model.probe.device
    err = torch.zeros(L)
    loss = torch.zeros(L)
    for s in range(0, len(neg), chunk):
        n, p, t = neg[s : s + chunk], pos[s : s + chunk], target[:, s : s + chunk].to(dev)
        ln, tn = model(cap.data[:, n].to(dev, torch.float32))
        lp, tp = model(cap.data[:, p].to(dev, torch.float32))
        err += ((tn - t).abs().sum(1) + tp.abs().sum(1)).cpu()
        loss += (
            F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln), reduction="none").sum(1)
            + F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp), reduction="none").sum(1)
            + ((tn - t) ** 2).sum(1)
            + (tp**2).sum(1)
        ).cpu()
    return {
        "accuracy": probe_accuracy(model, cap, threshold, chunk),
        "angle_error": err / (2 * len(neg)),
        "loss": loss / (2 * len(neg)),
    }


def train(
    train_cap: Captured,
    val_cap: Captured | None = None,
    *,
    config: TrainConfig | None = None,
    dataset: str | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> EditorSet:
    """Train one HPR editor per captured layer; return them with the top ``k`` selected.

    ``overrides`` set ``TrainConfig`` fields (``lr``, ``epochs``, ``batch_size``, ``seed``, ``k``,
    ``schedule``, ``grad_clip``, ``keep``, ...). With ``keep="best"`` the probe accuracy is measured
    after every epoch and the epoch with the highest mean over all layers is kept (the earliest
    on ties; ``best_epoch`` and ``epoch_val_accuracy`` in ``config``). Selection uses the validation split's probe accuracy (the training split's when
    ``val_cap`` is None, recorded as ``val_source``). ``config`` of the result holds
    ``val_accuracy``, ``val_angle_error`` (radians) and ``val_loss`` per layer, ``loss_history``
    (per layer, mean training loss of each epoch, with its ``bce`` and ``mse`` parts), the
    training parameters, the dataset, pair counts and the wall time. ``device``: where the
    editors train (default CPU); activations stay on the CPU and move per batch.
    """
    cfg = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    cfg.check()
    if val_cap is not None and val_cap.layers != train_cap.layers:
        raise ParameterError(f"train and val captures have different layers: {train_cap.layers} vs {val_cap.layers}")
    t0 = time.perf_counter()
    neg, pos = train_cap.pairs(cfg.threshold)
    if len(neg) == 0:
        raise DataError(
            "the training activations give no pairs; each question needs a correct and an "
            "incorrect answer whose tokens differ"
        )
    target = pair_targets(train_cap, neg, pos)
    L, d = len(train_cap.layers), train_cap.hidden_size
    torch.manual_seed(cfg.seed)
    templates = [HPR(d, cfg.angle_layers, angle_input=cfg.angle_input) for _ in range(L)]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model = StackedHPR(templates).to(dev)
    target = target.to(dev)
    opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(neg) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.schedule, steps_per_epoch * cfg.epochs, cfg.warmup))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, list[list[float]]] = {"loss": [], "bce": [], "mse": []}
    data = train_cap.data
    eval_cap = val_cap if val_cap is not None else train_cap
    epoch_acc: list[float] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(neg), generator=gen)
        sums = {k: torch.zeros(L, device=dev) for k in history}
        bar = tqdm(
            range(0, len(perm), cfg.batch_size),
            desc=f"train epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not progress,
            mininterval=1.0,
        )
        for s in bar:
            idx = perm[s : s + cfg.batch_size]
            b = len(idx)
            x = torch.cat([data[:, neg[idx]], data[:, pos[idx]]], dim=1).to(dev, torch.float32)
            label = torch.cat([torch.zeros(b, device=dev), torch.ones(b, device=dev)]).expand(L, -1)
            tgt = torch.cat([target[:, idx.to(dev)], torch.zeros(L, b, device=dev)], dim=1)
            logits, theta = model(x)
            bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none").mean(1)
            mse = ((theta - tgt) ** 2).mean(1)
            loss = bce + mse
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            if cfg.grad_clip is not None:
                clip_grad_norm_per_layer(list(model.parameters()), cfg.grad_clip)
            opt.step()
            sched.step()
            with torch.no_grad():
                sums["loss"] += loss.detach() * b
                sums["bce"] += bce.detach() * b
                sums["mse"] += mse.detach() * b
        for k in history:
            history[k].append((sums[k] / len(neg)).tolist())
        if cfg.keep == "best":
            model.eval()
            mean_acc = float(probe_accuracy(model, eval_cap, cfg.threshold).mean())
            epoch_acc.append(mean_acc)
            if best is None or mean_acc > best[0]:
                best = (mean_acc, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    val_source = "val" if val_cap is not None else "train"
    model = model.cpu()
    metrics = evaluate(model, val_cap if val_cap is not None else train_cap, cfg.threshold)
    layers = train_cap.layers
    editors = {layer: model.export(j, templates[j]) for j, layer in enumerate(layers)}
    acc = {layer: float(metrics["accuracy"][j]) for j, layer in enumerate(layers)}
    selected = sorted(layers, key=lambda i: (-acc[i], i))[: cfg.k]
    per_layer = {  # epoch lists per layer, keyed by the layer index
        k: {str(layer): [ep[j] for ep in v] for j, layer in enumerate(layers)} for k, v in history.items()
    }
    out_cfg = {
        "method": "hpr",
        "dataset": dataset or train_cap.meta.get("dataset"),
        "prompt_format": train_cap.meta.get("prompt_format"),
        "training": asdict(cfg),
        "val_source": val_source,
        "val_accuracy": {str(i): v for i, v in acc.items()},
        "val_angle_error": {str(i): float(metrics["angle_error"][j]) for j, i in enumerate(layers)},
        "val_loss": {str(i): float(metrics["loss"][j]) for j, i in enumerate(layers)},
        "loss_history": per_layer["loss"],
        "bce_history": per_layer["bce"],
        "mse_history": per_layer["mse"],
        "train_pairs": int(len(neg)),
        "train_tokens": train_cap.num_tokens,
        "val_pairs": int(len(val_cap.pairs(cfg.threshold)[0])) if val_cap is not None else None,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "k": cfg.k,
        "best_epoch": best[1] + 1 if best is not None else cfg.epochs,
        "epoch_val_accuracy": epoch_acc or None,
        "use_angle": True,
        "angle_input": cfg.angle_input,
    }
    fp = train_cap.meta.get("model") or {}
    return EditorSet(editors, fp, selected, out_cfg)


def train_from_model(
    model: nn.Module,
    tokenizer: Any,
    train_records: Sequence[Record],
    val_records: Sequence[Record] | None = None,
    *,
    layers: Sequence[int] | None = None,
    k: int = 5,
    prompt_format: str = DEFAULT_FORMAT,
    seed: int = 0,
    dataset: str = "custom",
    chat: bool | None = None,
    batch_size_capture: int = 16,
    cache: bool = True,
    progress: bool = True,
    name: str | None = None,
    **train_kw: Any,
) -> EditorSet:
    """Capture the train (and val) activations of ``model``, then ``train`` editors on them."""
    common = dict(
        dataset=dataset,
        layers=layers,
        prompt_format=prompt_format,
        seed=seed,
        chat=chat,
        batch_size=batch_size_capture,
        cache=cache,
        progress=progress,
        name=name,
    )
    tr = capture(model, tokenizer, train_records, split="train", **common)  # type: ignore[arg-type]
    va = capture(model, tokenizer, val_records, split="val", **common) if val_records else None  # type: ignore[arg-type]
    return train(tr, va, dataset=dataset, progress=progress, k=k, seed=seed, **train_kw)


__all__ = [
    "StackedHPR",
    "TrainConfig",
    "TRAIN_PRESETS",
    "evaluate",
    "pair_targets",
    "probe_accuracy",
    "train",
    "train_from_model",
]
