"""Inference-time intervention (ITI, Li et al. 2023) for any architecture in the table.

Per-head activations are the input of each block's attention output projection (the heads'
outputs side by side, ``(batch, seq, H * head_dim)``), taken at the last token of
``"Q: <question> A: <answer>"`` (honest_llama's ``utils.py`` format: one space, no newline) for
every answer of every training question (label 1 for a true answer). A logistic-regression probe
per (layer, head) is fitted on the train split and ranked by accuracy on the val split; the top
``k`` heads are edited (``k``: ``default_k``, the paper's 48/1024 share of all heads, or a number,
method name ``iti-k<K>``). The fitted artifact holds every head, ranked, with its direction and
scale, so ``k`` (like ``alpha``) is chosen at load time: ``iti`` and ``iti-k48`` share one fit. Each edited head gets the
mass-mean-shift direction ``mean(true) - mean(false)`` of its **train** activations (unit length)
and the scale ``sigma``, the standard deviation of the **train** activations projected on it: the
validation split only ranks heads. At apply time ``alpha * sigma * direction`` is added to that
head's slice at **every position** of every batch element (in ``generate()`` each new token once),
computed in float32 and added in the model's dtype; ``alpha`` (default 15, method name
``iti-<alpha>``) is chosen at load time and leaves the fitted artifact alone.

Unlike the public ITI code, the shift is applied to the whole batch and every position (not
only element 0 / the last token), nothing assumes fp16, and the statistics come from the train
split alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from hpr import _files
from hpr.data.records import Record
from hpr.errors import EditorError, ParameterError
from hpr.lm.architectures import fingerprint, num_heads, num_layers
from hpr.lm.hooks import edit_attention_heads
from hpr.methods.base import METHOD_FORMAT, check_fingerprint, read_method_config
from hpr.methods.iti_heads import head_activations, head_dim, mass_mean_directions, probe_accuracies, qa_examples

WEIGHTS_FILE = "iti.safetensors"
#: The paper's scaling factor; 200 is the second setting of the HPR paper's analysis.
DEFAULT_ALPHA = 15.0
#: The ITI paper edits K = 48 of the 1024 heads of a 7B model (32 layers x 32 heads).
PAPER_HEAD_FRACTION = 48 / 1024


def default_k(total_heads: int) -> int:
    """Heads to edit by default: the paper's fraction 48/1024 of all heads, at least 1.

    Keeping the *fraction* rather than the count keeps the edit's reach comparable across
    model sizes: SmolLM2-135M has 30 x 9 = 270 heads -> k = 13; Gemma-3-270M 18 x 4 = 72 -> 3.
    """
    return max(1, round(total_heads * PAPER_HEAD_FRACTION))


class _AddShift:
    """The edit ``x -> x + shift`` with the float32 shift cast to ``x``'s dtype and device."""

    def __init__(self, shift: Tensor) -> None:
        self.shift = shift

    def __call__(self, x: Tensor) -> Tensor:
        return x + self.shift.to(device=x.device, dtype=x.dtype)


class ITI:
    """A fitted ITI intervention: the ``k`` edited heads ``heads[i] = (layer, head)`` with
    ``directions[i]`` (head_dim,) unit vectors, ``sigmas[i]`` scales, and the strength ``alpha``.

    The constructor takes heads in rank order (best first), possibly more than ``k`` (a fit keeps
    every head); ``k`` (default: all given) picks how many are edited, ``top(k)`` another count."""

    name = "iti"

    def __init__(
        self,
        heads: Sequence[tuple[int, int]],
        directions: Tensor,
        sigmas: Tensor,
        model: dict[str, Any],
        num_heads: int,
        head_dim: int,
        alpha: float = DEFAULT_ALPHA,
        config: dict[str, Any] | None = None,
        k: int | None = None,
    ) -> None:
        if not heads:
            raise EditorError("an ITI intervention needs at least one head")
        k = len(heads) if k is None else int(k)
        if not 1 <= k <= len(heads):
            raise ParameterError(f"ITI k must be in 1..{len(heads)} (the heads this fit ranked), got {k}")
        if directions.shape != (len(heads), head_dim) or sigmas.shape != (len(heads),):
            raise EditorError(
                f"ITI weights have shapes {tuple(directions.shape)} and {tuple(sigmas.shape)}, "
                f"expected ({len(heads)}, {head_dim}) and ({len(heads)},); refit the method"
            )
        if not math.isfinite(alpha):
            raise ParameterError(f"ITI alpha must be a finite number, got {alpha}")
        self.ranked = [(int(a), int(b)) for a, b in heads]
        self.ranked_directions = directions.float()
        self.ranked_sigmas = sigmas.float()
        self.k = k
        self.model = dict(model)
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)
        self.alpha = float(alpha)
        self.config = dict(config or {})

    @property
    def heads(self) -> list[tuple[int, int]]:
        """The ``k`` edited heads, best first."""
        return self.ranked[: self.k]

    @property
    def directions(self) -> Tensor:
        """``(k, head_dim)`` unit directions of the edited heads."""
        return self.ranked_directions[: self.k]

    @property
    def sigmas(self) -> Tensor:
        """``(k,)`` scales of the edited heads."""
        return self.ranked_sigmas[: self.k]

    def top(self, k: int) -> ITI:
        """The same fit with the ``k`` best heads edited."""
        return ITI(
            self.ranked,
            self.ranked_directions,
            self.ranked_sigmas,
            self.model,
            self.num_heads,
            self.head_dim,
            self.alpha,
            {**self.config, "k": int(k)},
            k,
        )

    @property
    def layers(self) -> list[int]:
        """Decoder blocks that contain an edited head, ascending."""
        return sorted({la for la, _ in self.heads})

    def with_alpha(self, alpha: float) -> ITI:
        """The same heads and directions with another strength."""
        return ITI(
            self.ranked,
            self.ranked_directions,
            self.ranked_sigmas,
            self.model,
            self.num_heads,
            self.head_dim,
            alpha,
            self.config,
            self.k,
        )

    def shifts(self) -> dict[int, Tensor]:
        """Per edited layer, the float32 shift ``(H * head_dim,)`` added to the o_proj input."""
        out: dict[int, Tensor] = {}
        for (layer, head), d, s in zip(self.heads, self.directions, self.sigmas, strict=True):
            vec = out.setdefault(layer, torch.zeros(self.num_heads * self.head_dim))
            vec[head * self.head_dim : (head + 1) * self.head_dim] += self.alpha * s * d
        return out

    def check_model(self, model: nn.Module) -> None:
        check_fingerprint(self.model, model, "iti")
        if num_heads(model) != self.num_heads or head_dim(model) != self.head_dim:
            raise EditorError(
                f"ITI was fitted for {self.num_heads} heads of width {self.head_dim}, the model has "
                f"{num_heads(model)} of width {head_dim(model)}; fit ITI for this model"
            )

    @contextmanager
    def apply(self, model: nn.Module, check: bool = True) -> Iterator[nn.Module]:
        """Add ``alpha * sigma * direction`` to each edited head's slice inside the block."""
        if check:
            self.check_model(model)
        edits = {layer: _AddShift(vec) for layer, vec in self.shifts().items()}
        with edit_attention_heads(model, edits):
            yield model

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        tensors = {  # every ranked head; "k" in the config says how many are edited by default
            "heads": torch.tensor(self.ranked, dtype=torch.long).reshape(-1, 2),
            "directions": self.ranked_directions,
            "sigmas": self.ranked_sigmas,
        }
        _files.save_tensors(out / WEIGHTS_FILE, tensors, {"format": METHOD_FORMAT})
        cfg = {
            **{k: v for k, v in self.config.items() if k not in {"alpha", "model", "heads"}},
            "format": METHOD_FORMAT,
            "method": "iti",
            "alpha": self.alpha,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "k": self.k,
            "heads": [list(h) for h in self.heads],
            "model": self.model,
        }
        _files.write_json(out / "config.json", cfg)
        return out

    @classmethod
    def load(
        cls, directory: str | Path, model: nn.Module | None = None, alpha: float | None = None, k: int | None = None
    ) -> ITI:
        """Load a saved ITI; ``alpha`` overrides the saved strength (e.g. 200), ``k`` the number of
        edited heads (e.g. 48; at most the number of heads the fit ranked)."""
        cfg = read_method_config(directory, "iti")
        path = Path(directory) / WEIGHTS_FILE
        try:
            t = load_file(str(path))
            heads = [(int(a), int(b)) for a, b in t["heads"].tolist()]
            want = int(cfg.get("k", len(heads)) if k is None else k)
            if not 1 <= want <= len(heads):
                raise ParameterError(f"{directory} ranks {len(heads)} heads; k={want} is out of range 1..{len(heads)}")
            out = cls(
                heads,
                t["directions"],
                t["sigmas"],
                cfg["model"],
                int(cfg["num_heads"]),
                int(cfg["head_dim"]),
                float(cfg["alpha"] if alpha is None else alpha),
                {**cfg, "k": want},
                want,
            )
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
            raise EditorError(f"{path} is missing or unreadable ({exc}); fit ITI again") from exc
        if model is not None:
            out.check_model(model)
        return out


def fit_iti(
    *,
    model: nn.Module,
    tokenizer: Any,
    train: Sequence[Record],
    val: Sequence[Record],
    seed: int = 0,
    dataset: str = "truthfulqa",
    k: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = 16,
    progress: bool = True,
) -> ITI:
    """Fit ITI: probes on ``train``, heads ranked on ``val``, directions and scales from ``train`` only.

    ``k``: heads to edit (default ``default_k``); ``alpha``: strength stored as the default (a load
    option: ``ITI.load(..., alpha=)`` / ``with_alpha``). The edit covers every position.
    """
    h, hd, n_layers = num_heads(model), head_dim(model), num_layers(model)
    total = n_layers * h
    k = default_k(total) if k is None else int(k)
    if not 1 <= k <= total:
        raise ParameterError(f"ITI k must be in 1..{total} (layers x heads), got {k}")
    if not val:
        raise ParameterError("ITI ranks heads by validation accuracy; the val split is empty")
    tr_texts, tr_y = qa_examples(train)
    va_texts, va_y = qa_examples(val)
    tr_x = head_activations(model, tokenizer, tr_texts, batch_size, progress)
    va_x = head_activations(model, tokenizer, va_texts, batch_size, progress)
    tr_acc, va_acc = probe_accuracies(tr_x, tr_y, va_x, va_y, seed, progress)
    flat = va_acc.flatten().tolist()
    order = sorted(range(total), key=lambda i: (-flat[i], i))  # every head, best first
    heads = [(i // h, i % h) for i in order]
    directions, sigmas = mass_mean_directions(tr_x, tr_y)
    sel_d = torch.stack([directions[la, he] for la, he in heads])
    sel_s = torch.stack([sigmas[la, he] for la, he in heads])
    config = {
        "dataset": dataset,
        "seed": seed,
        "k": k,
        "n_train_examples": len(tr_texts),
        "n_val_examples": len(va_texts),
        "ranking": [
            {"layer": la, "head": he, "val_accuracy": float(va_acc[la, he]), "train_accuracy": float(tr_acc[la, he])}
            for la, he in heads
        ],
        "val_accuracy": va_acc.tolist(),
    }
    return ITI(heads, sel_d, sel_s, fingerprint(model), h, hd, alpha, config, k)


__all__ = ["ITI", "fit_iti", "default_k", "DEFAULT_ALPHA"]
