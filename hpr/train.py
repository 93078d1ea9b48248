"""Train HPR editors for every captured layer at once, and pick the best layers.

Per layer, with activations ``a`` of hidden size ``d`` (``hpr.capture``): the training
examples are the pairs ``(a_neg, a_pos)`` of ``Captured.pairs`` and, per batch of pairs, both
members. Loss per layer = BCE(p(a), label) + MSE(theta(a), target), averaged over the batch's
``2 B`` activations: label 0 / target ``angle(a_neg, a_pos)`` (radians) for the negative of a
pair, label 1 / target 0 for the positive. Defaults as the paper: AdamW, lr 5e-4, cosine
schedule with 5% linear warmup, 5 epochs, batch 16 pairs.

All layers are trained together: their weights are stacked (``StackedHPR``, leading dimension
L) and applied with batched matmuls, so one pass over the data per epoch trains L editors. The
summed loss gives each layer exactly its own gradient, and AdamW is elementwise, so this equals
L independent trainings with the same batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .capture import SHARED_THRESHOLD, Captured, capture
from .editor import HPR, EditorSet
from .errors import DataError, ParameterError
from .kernels import angle_between
from .prompts import DEFAULT_FORMAT
from .records import Record


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (the paper's defaults). ``batch_size`` counts pairs."""

    lr: float = 5e-4
    epochs: int = 5
    batch_size: int = 16
    warmup: float = 0.05
    weight_decay: float = 0.01
    angle_layers: int = 4
    seed: int = 0
    k: int = 5
    threshold: float = SHARED_THRESHOLD

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
        if self.k < 1:
            bad.append(f"k must be >= 1 (got {self.k})")
        if not 0 < self.threshold <= 1:
            bad.append(f"threshold must be in (0, 1] (got {self.threshold})")
        if bad:
            raise ParameterError("invalid training parameters: " + "; ".join(bad))


class StackedHPR(nn.Module):
    """L HPR editors of hidden size d as stacked tensors; ``forward(x (L, B, d))``.

    Returns ``(logits (L, B), theta (L, B))``: probe logits ``w . a`` and angles in radians.
    Initialised from ``HPR`` modules, so each layer starts as a fresh ``HPR`` would.
    """

    def __init__(self, editors: Sequence[HPR]) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.stack([e.probe.weight[0].detach() for e in editors]))
        linears = [[m for m in e.angle if isinstance(m, nn.Linear)] for e in editors]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].weight.detach().T for ls in linears]).contiguous())
            for i in range(len(linears[0]))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].bias.detach() for ls in linears]).unsqueeze(1))
            for i in range(len(linears[0]))
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = torch.einsum("lbd,ld->lb", x, self.probe)
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i:
                h = F.gelu(h)
            h = torch.baddbmm(b, h, w)
        return logits, math.pi * torch.sigmoid(h.squeeze(-1))

    def export(self, layer: int, template: HPR) -> HPR:
        """Editor ``layer`` (index into the stack) as an ``HPR`` shaped like ``template``."""
        e = HPR(template.hidden_size, template.angle_layers, template.use_angle)
        with torch.no_grad():
            e.probe.weight.copy_(self.probe[layer].unsqueeze(0))
            linears = [m for m in e.angle if isinstance(m, nn.Linear)]
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[layer].T)
                lin.bias.copy_(b[layer, 0])
        return e


def _schedule(opt: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, int(round(warmup * total))) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused where the build supports it (several times faster on CPU, same update)."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def pair_targets(cap: Captured, neg: Tensor, pos: Tensor, chunk: int = 8192) -> Tensor:
    """``angle(a_neg, a_pos)`` per layer and pair, radians, shape ``(L, P)``."""
    out = torch.empty(len(cap.layers), len(neg))
    for j in range(len(cap.layers)):
        x = cap.data[j]
        for s in range(0, len(neg), chunk):
            out[j, s : s + chunk] = angle_between(x[neg[s : s + chunk]], x[pos[s : s + chunk]])
    return out


@torch.no_grad()
def evaluate(model: StackedHPR, cap: Captured, threshold: float = SHARED_THRESHOLD,
             chunk: int = 2048) -> dict[str, Tensor]:
    """Per-layer validation metrics, each of shape ``(L,)``.

    ``accuracy``: probe accuracy on the distinct rows of the pairs (answer tokens outside the
    shared prefix); ``angle_error``: mean |theta - target| in radians over the pairs' negatives
    (target angle(a_neg, a_pos)) and positives (target 0); ``loss``: the training loss.
    """
    neg, pos = cap.pairs(threshold)
    if len(neg) == 0:
        raise DataError("the validation activations give no pairs; each question needs a correct "
                        "and an incorrect answer")
    target = pair_targets(cap, neg, pos)
    L = len(cap.layers)
    rows = torch.unique(torch.cat([neg, pos]))
    correct = torch.zeros(L)
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        logits, _ = model(cap.data[:, r].float())
        correct += ((logits > 0).long() == cap.label[r]).float().sum(1)
    err = torch.zeros(L)
    loss = torch.zeros(L)
    for s in range(0, len(neg), chunk):
        n, p, t = neg[s : s + chunk], pos[s : s + chunk], target[:, s : s + chunk]
        ln, tn = model(cap.data[:, n].float())
        lp, tp = model(cap.data[:, p].float())
        err += (tn - t).abs().sum(1) + tp.abs().sum(1)
        loss += (F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln), reduction="none").sum(1)
                 + F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp), reduction="none").sum(1)
                 + ((tn - t) ** 2).sum(1) + (tp**2).sum(1))
    return {"accuracy": correct / len(rows), "angle_error": err / (2 * len(neg)),
            "loss": loss / (2 * len(neg))}


def train(
    train_cap: Captured, val_cap: Captured | None = None, *, config: TrainConfig | None = None,
    dataset: str | None = None, progress: bool = True, device: str | torch.device | None = None,
    **overrides: Any,
) -> EditorSet:
    """Train one HPR editor per captured layer; return them with the top ``k`` selected.

    ``overrides`` set ``TrainConfig`` fields (``lr``, ``epochs``, ``batch_size``, ``seed``, ``k``,
    ...). Selection uses the validation split's probe accuracy (the training split's when
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
        raise DataError("the training activations give no pairs; each question needs a correct and an "
                        "incorrect answer whose tokens differ")
    target = pair_targets(train_cap, neg, pos)
    L, d = len(train_cap.layers), train_cap.hidden_size
    torch.manual_seed(cfg.seed)
    templates = [HPR(d, cfg.angle_layers) for _ in range(L)]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model = StackedHPR(templates).to(dev)
    target = target.to(dev)
    opt = _adamw(model, cfg)
    steps_per_epoch = math.ceil(len(neg) / cfg.batch_size)
    sched = _schedule(opt, steps_per_epoch * cfg.epochs, cfg.warmup)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, list[list[float]]] = {"loss": [], "bce": [], "mse": []}
    data = train_cap.data
    model.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(neg), generator=gen)
        sums = {k: torch.zeros(L, device=dev) for k in history}
        bar = tqdm(range(0, len(perm), cfg.batch_size), desc=f"train epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", disable=not progress, mininterval=1.0)
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
            opt.step()
            sched.step()
            with torch.no_grad():
                sums["loss"] += loss.detach() * b
                sums["bce"] += bce.detach() * b
                sums["mse"] += mse.detach() * b
        for k in history:
            history[k].append((sums[k] / len(neg)).tolist())
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
        "use_angle": True,
    }
    fp = train_cap.meta.get("model") or {}
    return EditorSet(editors, fp, selected, out_cfg)


def train_from_model(
    model: nn.Module, tokenizer: Any, train_records: Sequence[Record],
    val_records: Sequence[Record] | None = None, *, layers: Sequence[int] | None = None, k: int = 5,
    prompt_format: str = DEFAULT_FORMAT, seed: int = 0, dataset: str = "custom",
    chat: bool | None = None, batch_size_capture: int = 16, cache: bool = True, progress: bool = True,
    name: str | None = None, **train_kw: Any,
) -> EditorSet:
    """Capture the train (and val) activations of ``model``, then ``train`` editors on them."""
    common = dict(dataset=dataset, layers=layers, prompt_format=prompt_format, seed=seed, chat=chat,
                  batch_size=batch_size_capture, cache=cache, progress=progress, name=name)
    tr = capture(model, tokenizer, train_records, split="train", **common)  # type: ignore[arg-type]
    va = capture(model, tokenizer, val_records, split="val", **common) if val_records else None  # type: ignore[arg-type]
    return train(tr, va, dataset=dataset, progress=progress, k=k, seed=seed, **train_kw)


__all__ = ["StackedHPR", "TrainConfig", "evaluate", "pair_targets", "train", "train_from_model"]
