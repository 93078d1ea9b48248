"""L HPR editors as one module of stacked tensors (leading dimension L), so that one batched pass
trains or evaluates an editor per captured layer (``hpr.train``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpr.editor import HPR, angle_input_of


class StackedHPR(nn.Module):
    """L HPR editors of hidden size d as stacked tensors; ``forward(x (L, B, d))``.

    Returns ``(logits (L, B), theta (L, B))``: probe logits ``w . a`` and angles in radians.
    Initialised from ``HPR`` modules, so each layer starts as a fresh ``HPR`` would (the angle
    network reads what ``HPR.angle_input`` says, the same for every layer).
    """

    def __init__(self, editors: Sequence[HPR]) -> None:
        super().__init__()
        self.angle_input = editors[0].angle_input
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
        h = angle_input_of(x, self.angle_input)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i:
                h = F.gelu(h)
            h = torch.baddbmm(b, h, w)
        return logits, math.pi * torch.sigmoid(h.squeeze(-1))

    def export(self, layer: int, template: HPR) -> HPR:
        """Editor ``layer`` (index into the stack) as an ``HPR`` shaped like ``template``."""
        e = HPR(template.hidden_size, template.angle_layers, template.use_angle, template.angle_input)
        with torch.no_grad():
            e.probe.weight.copy_(self.probe[layer].unsqueeze(0))
            linears = [m for m in e.angle if isinstance(m, nn.Linear)]
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[layer].T)
                lin.bias.copy_(b[layer, 0])
        return e


__all__ = ["StackedHPR"]
