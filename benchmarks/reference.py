"""The paper's reference design of the HPR edit, for the comparison rows of the benchmarks only.

Written from the description of the paper's released code (not a copy of it): on every call it
builds the dense d x d Householder matrix ``H = I - 2 w w^T / (w . w)`` in float32, reflects with a
matrix product, runs the angle network in float32, uses the law-of-sines form of the rotation
and combines edited and unedited activations through masks built with ``torch.diag_embed``
(a (seq x seq) diagonal matrix per sequence, applied by matrix products). The library never
uses this; ``hpr.editor.HPR.edit`` is the O(d) path. Results agree with it wherever the rotation
plane is well defined (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from hpr.editor import HPR


def householder_matrix(w: Tensor) -> Tensor:
    """Dense ``I - 2 w w^T / (w . w)`` in float32, shape (d, d)."""
    wf = w.float()
    d = wf.shape[0]
    eye = torch.eye(d, dtype=torch.float32, device=w.device)
    return eye - 2.0 * torch.outer(wf, wf) / (wf @ wf)


def reference_edit(editor: HPR, x: Tensor) -> Tensor:
    """The reference-design edit of ``x`` (batch, seq, d) by ``editor``; same shape and dtype.

    Negatives (probe logit < 0) are rotated by ``theta`` towards ``H x`` with the law of
    sines (``editor.use_angle``) or reflected; positives are kept. Float32 throughout.
    """
    if x.dim() != 3:
        raise ValueError(f"reference_edit expects (batch, seq, d), got {tuple(x.shape)}")
    xf = x.float()
    w = editor.normal.detach().float()
    h = householder_matrix(w)  # built on every call, as in the reference code
    hx = xf @ h
    p = torch.sigmoid(xf @ w)  # (batch, seq)
    if editor.use_angle:
        angle = editor.angle
        if angle[0].weight.dtype != torch.float32:  # the reference runs it in float32
            angle = copy.deepcopy(angle).float()
        theta = math.pi * torch.sigmoid(angle(xf).squeeze(-1))
        cos_g = torch.nn.functional.cosine_similarity(xf, hx, dim=-1).clamp(-1.0, 1.0)
        gamma = torch.acos(cos_g)
        moved = (torch.sin(theta) / torch.sin(gamma)).unsqueeze(-1) * hx + (
            torch.sin(gamma - theta) / torch.sin(gamma)
        ).unsqueeze(-1) * xf
    else:
        moved = hx
    neg = (p < 0.5).float()
    # Masks as (seq x seq) diagonal matrices, applied with matrix products.
    out = torch.diag_embed(neg) @ moved + torch.diag_embed(1.0 - neg) @ xf
    return out.to(x.dtype)


class ReferenceCall:
    """Hook callable ``x -> reference_edit(editor, x)`` for ``hpr.lm.hooks.edit_block_outputs``."""

    def __init__(self, editor: HPR) -> None:
        self.editor = editor

    def __call__(self, x: Tensor) -> Tensor:
        if self.editor.normal.device != x.device:
            self.editor.to(x.device)
        return reference_edit(self.editor, x)


__all__ = ["ReferenceCall", "householder_matrix", "reference_edit"]
