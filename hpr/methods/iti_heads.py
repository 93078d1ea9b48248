"""ITI's per-head statistics (``hpr.methods.iti``): the ``"Q: <question> A: <answer>"`` examples, every
head's activation at their last token ``(N, L, H, head_dim)``, one logistic-regression probe per
(layer, head) and the mass-mean-shift directions with their scales."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hpr._extras import require
from hpr.data.records import Record
from hpr.errors import EditorError, ParameterError
from hpr.lm.architectures import attn_out_proj, num_heads, num_layers
from hpr.lm.hooks import record_attention_inputs
from hpr.lm.kv import pad_texts
from hpr.lm.placement import model_device


def qa_text(question: str, answer: str) -> str:
    """The ITI probing format of honest_llama (``utils.py: format_truthfulqa``): ``"Q: <question> A: <answer>"``."""
    return f"Q: {question} A: {answer}"


def qa_examples(records: Sequence[Record]) -> tuple[list[str], Tensor]:
    """Every (question, answer) text of ``records`` and its label (1 = true), shape ``(N,)``."""
    texts: list[str] = []
    labels: list[int] = []
    for r in records:
        good = set(r.correct)
        for i, choice in enumerate(r.choices):
            texts.append(qa_text(r.prompt, choice))
            labels.append(int(i in good))
    return texts, torch.tensor(labels, dtype=torch.long)


def head_dim(model: nn.Module) -> int:
    """Width of one head's slice of the attention output projection's input."""
    proj = attn_out_proj(model, 0)
    width = getattr(proj, "in_features", None) or getattr(proj, "nx", None)
    if width is None:
        raise EditorError(f"cannot read the input width of {type(proj).__name__}; add it to hpr.methods.iti.head_dim")
    h = num_heads(model)
    if int(width) % h:
        raise EditorError(f"attention output width {width} is not divisible by {h} heads")
    return int(width) // h


def _no_logits(model: nn.Module) -> dict[str, Any]:
    """Forward kwargs that skip most of the LM head when the model supports it."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.no_grad()
def head_activations(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 16,
    progress: bool = True,
) -> Tensor:
    """Per-head activations at the last token of each text, float32 ``(N, L, H, head_dim)``."""
    if not texts:
        raise ParameterError("no texts to capture head activations from")
    n_layers, h, hd = num_layers(model), num_heads(model), head_dim(model)
    device = model_device(model)
    out = torch.empty((len(texts), n_layers, h, hd), dtype=torch.float32)
    current: dict[str, Any] = {}

    def grab(layer: int, x: Tensor) -> None:
        rows = torch.arange(x.shape[0], device=x.device)
        start = current["start"]
        out[start : start + x.shape[0], layer] = (
            x[rows, current["last"].to(x.device)].float().reshape(x.shape[0], h, hd).cpu()
        )

    with record_attention_inputs(model, range(n_layers), on_input=grab):
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="ITI head activations", disable=not progress):
            chunk = texts[start : start + batch_size]
            ids, mask = pad_texts(tokenizer, chunk, device)
            current["start"] = start
            current["last"] = mask.sum(1) - 1
            model(input_ids=ids, attention_mask=mask, use_cache=False, **_no_logits(model))
    return out


def probe_accuracies(
    train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, seed: int = 0, progress: bool = True
) -> tuple[Tensor, Tensor]:
    """Fit a logistic-regression probe per head; train and val accuracy, each ``(L, H)``.

    ``*_x``: ``(N, L, H, head_dim)`` activations, ``*_y``: ``(N,)`` labels in {0, 1}.
    """
    require("sklearn", "baselines", "ITI's head probes")
    from sklearn.linear_model import LogisticRegression

    if len(set(train_y.tolist())) < 2:
        raise ParameterError("ITI needs true and false answers in the training split; got one class")
    n_layers, h = train_x.shape[1], train_x.shape[2]
    tr_acc = torch.zeros(n_layers, h)
    va_acc = torch.zeros(n_layers, h)
    ytr, yva = train_y.numpy(), val_y.numpy()
    cells = [(la, he) for la in range(n_layers) for he in range(h)]
    for la, he in tqdm(cells, desc="ITI probes", disable=not progress):
        xtr = train_x[:, la, he].numpy().astype(np.float64)
        clf = LogisticRegression(max_iter=1000, random_state=seed).fit(xtr, ytr)
        tr_acc[la, he] = float((clf.predict(xtr) == ytr).mean())
        if len(yva):
            va_acc[la, he] = float((clf.predict(val_x[:, la, he].numpy().astype(np.float64)) == yva).mean())
    return tr_acc, va_acc


def mass_mean_directions(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Unit mass-mean-shift directions and their scales for every head of ``x``.

    ``x``: ``(N, ..., hd)`` float activations, ``y``: ``(N,)`` labels. Returns ``directions``
    ``(..., hd)`` = normalized ``mean(x[y=1]) - mean(x[y=0])`` and ``sigma`` ``(...)`` = standard
    deviation over all N of ``x`` projected on the direction (population, as honest_llama's
    ``np.std`` in ``utils.py: get_interventions_dict``).
    """
    xf = x.float()
    pos, neg = xf[y == 1], xf[y == 0]
    if not len(pos) or not len(neg):
        raise ParameterError("mass mean shift needs both true and false examples")
    diff = pos.mean(0) - neg.mean(0)
    directions = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    proj = (xf * directions).sum(-1)
    return directions, proj.std(0, correction=0)


__all__ = ["qa_text", "qa_examples", "head_activations", "probe_accuracies", "mass_mean_directions", "head_dim"]
