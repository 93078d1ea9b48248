"""Per-layer analyses of trained HPR editors on captured activations (notebook 3).

``angle_fit_per_layer``: how well the angle network predicts the target angle ``angle(a_neg, a_pos)``
on every layer's (validation) pairs, with the norm of its input (a saturated input is the first
suspect when it predicts about 0 everywhere). ``plane_assumption``: HPR assumes the desired
activation ``a_pos`` lies in the plane of ``a_neg`` and its reflection ``H a_neg``; per layer, the
share of ``|a_pos|`` inside that plane, and the angle ``gamma`` between ``a_neg`` and ``H a_neg``
(the largest rotation HPR can make) beside the target angle. Angles are in radians.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hpr.editor_set import EditorSet
from hpr.errors import DataError
from hpr.householder import angle_between
from hpr.lm.activations import SHARED_THRESHOLD, Captured

#: Predictions below this angle (radians) count as "about 0".
NEAR_ZERO = 0.01


def _layer_pairs(editors: EditorSet, cap: Captured, threshold: float) -> tuple[list[int], Tensor, Tensor]:
    layers = [layer for layer in cap.layers if layer in editors.editors]
    if not layers:
        raise DataError(
            f"no captured layer {cap.layers} has an editor (editors: {sorted(editors.editors)}); "
            "capture the layers the editors were trained on"
        )
    neg, pos = cap.pairs(threshold)
    if len(neg) == 0:
        raise DataError(
            "the captured activations give no (negative, positive) pairs; each question needs "
            "a correct and an incorrect answer"
        )
    return layers, neg, pos


@torch.no_grad()
def angle_fit_per_layer(
    editors: EditorSet, cap: Captured, threshold: float = SHARED_THRESHOLD, chunk: int = 8192
) -> Any:
    """Predicted vs target angle on ``cap``'s pair negatives, per layer: a pandas DataFrame.

    Columns: ``layer``, ``pairs``, ``mean_target`` (``angle(a_neg, a_pos)``), ``mean_pred``
    (``theta(a_neg)``), ``mean_abs_error``, ``share_pred_below_0.01`` (share of predictions under
    0.01 rad), ``mean_input_norm`` (mean ``|a_neg|``, the angle network's input). A negative in
    several pairs counts once per pair.
    """
    import pandas as pd

    layers, neg, pos = _layer_pairs(editors, cap, threshold)
    rows = []
    for layer in layers:
        x = cap.data[cap.layer_index(layer)]
        editor = editors.editors[layer]
        sums = torch.zeros(5, dtype=torch.float64)
        for s in range(0, len(neg), chunk):
            a, b = x[neg[s : s + chunk]].float(), x[pos[s : s + chunk]].float()
            target, pred = angle_between(a, b).double(), editor.theta(a).double()
            sums += torch.stack(
                [
                    target.sum(),
                    pred.sum(),
                    (pred - target).abs().sum(),
                    (pred < NEAR_ZERO).double().sum(),
                    a.double().norm(dim=-1).sum(),
                ]
            )
        m = (sums / len(neg)).tolist()
        rows.append(
            {
                "layer": layer,
                "pairs": int(len(neg)),
                "mean_target": m[0],
                "mean_pred": m[1],
                "mean_abs_error": m[2],
                f"share_pred_below_{NEAR_ZERO}": m[3],
                "mean_input_norm": m[4],
            }
        )
    return pd.DataFrame(rows)


def plane_share(a_neg: Tensor, a_pos: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``(share, gamma)`` per row: ``|P a_pos| / |a_pos|`` with ``P`` the orthogonal projector onto
    span{a_neg, H a_neg} (``H = I - 2 w w^T / |w|^2``), and ``gamma = angle(a_neg, H a_neg)``.

    ``a_neg``, ``a_pos``: ``(N, d)``; ``w``: ``(d,)``. Computed in float64. Where ``H a_neg`` is
    parallel to ``a_neg`` the plane degenerates to the line of ``a_neg``.
    """
    a, p = a_neg.double(), a_pos.double()
    wh = w.double() / w.double().norm()
    ha = a - 2 * (a @ wh).unsqueeze(-1) * wh
    e1 = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    u = ha - (ha * e1).sum(-1, keepdim=True) * e1
    un = u.norm(dim=-1, keepdim=True)
    e2 = torch.where(un > 1e-12 * a.norm(dim=-1, keepdim=True), u / un.clamp_min(1e-300), torch.zeros_like(u))
    inside = torch.sqrt((p * e1).sum(-1) ** 2 + (p * e2).sum(-1) ** 2)
    return inside / p.norm(dim=-1).clamp_min(1e-300), angle_between(a, ha).double()


@torch.no_grad()
def plane_assumption(editors: EditorSet, cap: Captured, threshold: float = SHARED_THRESHOLD, chunk: int = 8192) -> Any:
    """HPR's plane assumption measured per layer on ``cap``'s pairs: a pandas DataFrame.

    Columns: ``layer``, ``pairs``, ``mean_share`` and ``median_share`` (``plane_share``: the share of
    ``|a_pos|`` in span{a_neg, H a_neg}, with ``w`` the layer's probe normal), ``mean_gamma``
    (``angle(a_neg, H a_neg)``), ``mean_target`` (``angle(a_neg, a_pos)``).
    """
    import pandas as pd

    layers, neg, pos = _layer_pairs(editors, cap, threshold)
    rows = []
    for layer in layers:
        x = cap.data[cap.layer_index(layer)]
        w = editors.editors[layer].normal.detach()
        shares, gammas, targets = [], [], []
        for s in range(0, len(neg), chunk):
            a, b = x[neg[s : s + chunk]], x[pos[s : s + chunk]]
            share, gamma = plane_share(a, b, w)
            shares.append(share)
            gammas.append(gamma)
            targets.append(angle_between(a.double(), b.double()).double())
        share_t = torch.cat(shares)
        rows.append(
            {
                "layer": layer,
                "pairs": int(len(neg)),
                "mean_share": float(share_t.mean()),
                "median_share": float(share_t.median()),
                "mean_gamma": float(torch.cat(gammas).mean()),
                "mean_target": float(torch.cat(targets).mean()),
            }
        )
    return pd.DataFrame(rows)


__all__ = ["NEAR_ZERO", "angle_fit_per_layer", "plane_share", "plane_assumption"]
