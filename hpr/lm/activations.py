"""Captured activations: the in-memory layout, training pairs, and the safetensors file.

In memory: ``Captured``

- ``data``: Tensor ``(L, N, d)``: ``data[j, n]`` is the output of decoder block ``layers[j]``
  (the residual stream after it, ``output[0]`` of the block) at answer token row ``n``. dtype:
  float32, or the model's dtype when it is half precision (float16 / bfloat16).
- ``acts``: ``dict[layer, Tensor (N, d)]``: views into ``data``; ``layers``: the block indices.
- Per token row ``n`` (``N`` rows; rows of one sequence are contiguous, in answer order):
  ``label`` (1 = positive/correct answer, 0 = negative), ``question`` (index into the records
  list), ``sequence`` (index of the (prompt, answer) sequence), ``position`` (0-based offset in
  the answer), ``token`` (token id), all int64 of shape ``(N,)``.
- ``meta``: model fingerprint, dataset, split, prompt format, seed, chat flag, data hash,
  record ids, the cache key.
- ``pairs(threshold=0.75)`` -> ``(neg_index, pos_index)``: int64 ``(P,)`` row indices. For every
  (negative answer, positive answer) of a question: the aligned answer positions
  ``0 .. min(len_neg, len_pos) - 1``, minus the positions where the two activations share at
  least ``threshold`` of their elements (equal within rtol 1e-5, atol 1e-6: the shared prefix
  of the two answers), as the paper's code does. With ``layer=None`` a position is dropped if it
  is shared at any captured layer, so every layer trains on the same pairs. Only positions
  where the two answers' tokens agree so far are compared (elsewhere, in a causal model with a
  shared prompt, the activations cannot coincide), which keeps this cheap.

On disk: one safetensors file ``cache_dir()/activations/<dataset>-<split>-<key>.safetensors``
with tensors ``acts`` ``(L, N, d)``, ``label``, ``question``, ``sequence``, ``position``,
``token`` and metadata ``{"hpr": json(meta)}``. ``key`` hashes the model fingerprint and dtype,
dataset, split, prompt format, seed, chat flag, layers and the records themselves; a rerun with
the same inputs loads the file instead of running the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from hpr import _files
from hpr.data.records import Record
from hpr.errors import DataError, ParameterError

#: Default fraction of identical elements above which a position counts as shared prefix.
SHARED_THRESHOLD = 0.75
_ROW_FIELDS = ("label", "question", "sequence", "position", "token")


@dataclass
class Captured:
    """Captured activations of one split; see the module docstring for the layout."""

    data: Tensor
    layers: list[int]
    label: Tensor
    question: Tensor
    sequence: Tensor
    position: Tensor
    token: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.data.shape[1]
        if self.data.dim() != 3 or self.data.shape[0] != len(self.layers):
            raise DataError(f"captured data must be (L={len(self.layers)}, N, d), got {tuple(self.data.shape)}")
        for name in _ROW_FIELDS:
            if getattr(self, name).shape != (n,):
                raise DataError(f"captured {name} must have shape ({n},)")

    @property
    def acts(self) -> dict[int, Tensor]:
        """``layer -> (N, d)`` views into ``data``."""
        return {layer: self.data[j] for j, layer in enumerate(self.layers)}

    @property
    def num_tokens(self) -> int:
        return int(self.data.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.data.shape[2])

    def layer_index(self, layer: int) -> int:
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise ParameterError(f"layer {layer} was not captured; captured: {self.layers}") from None

    def candidate_pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """All aligned (negative row, positive row) positions, before the shared-prefix filter.

        Returns ``(neg, pos, same_tokens)``: ``same_tokens`` marks positions where the two answers
        agree on every token up to and including that position.
        """
        seq = self.sequence
        starts = torch.ones_like(seq, dtype=torch.bool)
        starts[1:] = seq[1:] != seq[:-1]
        first = torch.nonzero(starts).squeeze(-1)
        lengths = torch.diff(torch.cat([first, torch.tensor([len(seq)])])).tolist()
        q, lab, first_l = self.question[first].tolist(), self.label[first].tolist(), first.tolist()
        by_q: dict[int, tuple[list[int], list[int]]] = {}
        for s in range(len(first_l)):
            by_q.setdefault(q[s], ([], []))[lab[s]].append(s)
        negs: list[Tensor] = []
        poss: list[Tensor] = []
        same: list[Tensor] = []
        for neg_seqs, pos_seqs in by_q.values():
            for f in neg_seqs:
                for p in pos_seqs:
                    ar = torch.arange(min(lengths[f], lengths[p]))
                    n, po = first_l[f] + ar, first_l[p] + ar
                    negs.append(n)
                    poss.append(po)
                    same.append(torch.cumprod((self.token[n] == self.token[po]).long(), 0).bool())
        if not negs:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, empty.bool()
        return torch.cat(negs), torch.cat(poss), torch.cat(same)

    def pairs(
        self, threshold: float = SHARED_THRESHOLD, layer: int | None = None, chunk: int = 8192
    ) -> tuple[Tensor, Tensor]:
        """``(neg_index, pos_index)`` rows of the training pairs; see the module docstring.

        Two answers of a question share the prompt, so in a causal model their activations can
        only coincide where their tokens agree up to that position: only those positions are
        compared (elementwise, ``threshold`` of the elements within rtol 1e-5, atol 1e-6).
        """
        neg, pos, same_tokens = self.candidate_pairs()
        if len(neg) == 0:
            return neg, pos
        js = range(len(self.layers)) if layer is None else [self.layer_index(layer)]
        check = torch.nonzero(same_tokens).squeeze(-1)
        shared = torch.zeros(len(neg), dtype=torch.bool)
        for j in js:
            x = self.data[j]
            for s in range(0, len(check), chunk):
                c = check[s : s + chunk]
                a, b = x[neg[c]].float(), x[pos[c]].float()
                shared[c] |= torch.isclose(a, b, rtol=1e-5, atol=1e-6).float().mean(-1) >= threshold
        keep = ~shared
        return neg[keep], pos[keep]

    def subset_layers(self, layers: Sequence[int]) -> Captured:
        """The same rows restricted to ``layers`` (views, no copy when contiguous)."""
        js = [self.layer_index(i) for i in layers]
        return Captured(
            self.data[js],
            [int(i) for i in layers],
            self.label,
            self.question,
            self.sequence,
            self.position,
            self.token,
            dict(self.meta),
        )

    def save(self, path: str | Path) -> Path:
        """Write the safetensors file atomically."""
        tensors = {"acts": self.data, **{k: getattr(self, k) for k in _ROW_FIELDS}}
        meta = {**self.meta, "layers": self.layers}
        _files.save_tensors(path, tensors, {"hpr": json.dumps(meta)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Captured:
        """Read a file written by ``save``; ``DataError`` if it is unreadable."""
        p = Path(path)
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})["hpr"])
                t = {k: fh.get_tensor(k) for k in ("acts", *_ROW_FIELDS)}
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise DataError(f"{p} is not a readable activation file ({exc}); delete it and rerun") from exc
        layers = [int(i) for i in meta.get("layers", [])]
        return cls(t["acts"], layers, t["label"], t["question"], t["sequence"], t["position"], t["token"], meta)


@dataclass(frozen=True)
class CachedCapture:
    """One activation cache file: its path, size in bytes, and what it holds (from its header)."""

    path: Path
    size: int
    model: str
    dataset: str
    split: str
    layers: int
    tokens: int


def cached_captures(root: str | Path) -> list[CachedCapture]:
    """Every activation cache file under ``root`` (``hpr._files.cache_dir() / "activations"`` by default), read from
    the safetensors headers only (no tensor is loaded); unreadable files show model ``?``."""
    out = []
    for p in sorted(Path(root).glob("*.safetensors")):
        model, dataset, split, layers, tokens = "?", "?", "?", 0, 0
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("hpr", "{}"))
                shape = fh.get_slice("acts").get_shape()
            fp = meta.get("model") or {}
            model = str(fp.get("name") or fp.get("architecture") or "?") if isinstance(fp, dict) else str(fp)
            dataset, split = str(meta.get("dataset", "?")), str(meta.get("split", "?"))
            layers, tokens = int(shape[0]), int(shape[1])
        except (SafetensorError, OSError, KeyError, ValueError, IndexError):
            pass
        out.append(CachedCapture(p, p.stat().st_size, model, dataset, split, layers, tokens))
    return out


def data_hash(records: Sequence[Record]) -> str:
    """A hash of the records' full content (the data version of a capture)."""
    return _files.stable_hash([r.to_dict() for r in records])


__all__ = ["SHARED_THRESHOLD", "CachedCapture", "Captured", "cached_captures", "data_hash"]
