"""The rotation explorer: rotate a real activation in the plane of ``a`` and ``H a``.

For one prompt and one edited layer, ``a`` (d,) is the decoder block's output at the prompt's
last token. The explorer rotates ``a`` by an angle ``theta`` (radians) towards its Householder
reflection ``H a`` (``hpr.householder.pseudo_rotate``), feeds the rotated vector back into the model
in place of ``a`` and reports: 2-D coordinates of ``a``, ``H a`` and the rotated vector in the
plane they span, the norms (constant), the probe's probability ``sigmoid(w . a')`` and the
model's next-token distribution.

``RotationExplorer.widget()`` gives ipywidgets sliders (layer, example, theta);
``RotationExplorer.jshtml()`` the same as a static ``matplotlib.animation`` player, fully
offline (its one external stylesheet link is removed).
"""

from __future__ import annotations

import io as _io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.animation import FuncAnimation
from matplotlib.figure import Figure
from torch import Tensor, nn

from hpr.editor_set import EditorSet
from hpr.errors import ParameterError
from hpr.householder import angle_between, pseudo_rotate, reflect
from hpr.lm.hooks import edit_block_outputs
from hpr.lm.placement import model_device

#: The one stylesheet ``to_jshtml`` links from a CDN (font-awesome); removed for offline use.
_EXTERNAL_LINK = re.compile(r"<link[^>]*href=[\"']https?://[^\"']*[\"'][^>]*>\s*", re.I)


@dataclass(frozen=True)
class Frame:
    """Everything drawn for one (layer, example, theta).

    ``coords``: 2-D coordinates in the plane of a and Ha (basis: a^, then the unit part of Ha
    orthogonal to a^) of ``a``, ``Ha`` and the rotated vector. ``gamma``: angle(a, Ha), radians.
    ``norm_a``, ``norm_rot``: Euclidean norms. ``p``: probe probability of the rotated vector.
    ``theta_pred``: the editor's predicted angle for ``a``. ``tokens``/``probs``: top next tokens.
    """

    layer: int
    example: int
    theta: float
    coords: dict[str, tuple[float, float]]
    gamma: float
    norm_a: float
    norm_rot: float
    p: float
    p_original: float
    theta_pred: float
    tokens: tuple[str, ...]
    probs: tuple[float, ...]


class RotationExplorer:
    """Interactive rotation of real activations of ``model`` with the probes of ``editors``.

    ``prompts``: texts whose last token's activation is rotated. Activations of every edited
    layer are captured once at construction (one forward per prompt).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, editors: EditorSet, prompts: Sequence[str], top_tokens: int = 8
    ) -> None:
        if not prompts:
            raise ParameterError("RotationExplorer needs at least one prompt")
        self.model, self.tokenizer, self.editors = model, tokenizer, editors
        self.prompts = list(prompts)
        self.layers = list(editors.selected)
        self.top_tokens = top_tokens
        self._ids: list[Tensor] = []
        self._acts: dict[tuple[int, int], Tensor] = {}
        device = model_device(model)
        for e, text in enumerate(self.prompts):
            ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
            self._ids.append(ids)
            with torch.no_grad():
                out = model(input_ids=ids, output_hidden_states=True)
            for layer in self.layers:
                self._acts[(layer, e)] = out.hidden_states[layer + 1][0, -1].float().cpu()
        self._widgets: dict[str, Any] = {}
        self.last_frame: Frame | None = None
        self.last_png: bytes = b""

    def activation(self, layer: int, example: int) -> Tensor:
        """The captured activation ``a`` (d,) of block ``layer`` at the last prompt token."""
        try:
            return self._acts[(layer, example)]
        except KeyError:
            raise ParameterError(
                f"no activation for layer {layer}, example {example}: layers are {self.layers}, "
                f"examples 0..{len(self.prompts) - 1}"
            ) from None

    def gamma(self, layer: int, example: int) -> float:
        """angle(a, Ha) in radians: how far a full reflection moves this activation."""
        a = self.activation(layer, example)
        return float(angle_between(a, reflect(a, self.editors.editors[layer].normal.detach().float().cpu())))

    def most_visible(self) -> tuple[int, int]:
        """The (layer, example) whose reflection moves its activation the most (largest gamma):
        where the explorer opens, so that a, Ha and a' do not sit on top of each other."""
        return max(((la, e) for la in self.layers for e in range(len(self.prompts))), key=lambda k: self.gamma(*k))

    def frame(self, layer: int, example: int, theta: float) -> Frame:
        """Rotate ``a`` by ``theta`` radians towards ``H a`` and measure the result."""
        a = self.activation(layer, example)
        editor = self.editors.editors[layer]
        w = editor.normal.detach().float().cpu()
        ha = reflect(a, w)
        rot = pseudo_rotate(a, w, torch.tensor(float(theta)))
        e1 = a / a.norm().clamp_min(1e-12)
        h_perp = ha - (ha @ e1) * e1
        e2 = h_perp / h_perp.norm() if float(h_perp.norm()) > 1e-6 * float(a.norm()) else torch.zeros_like(a)
        coords = {name: (float(v @ e1), float(v @ e2)) for name, v in (("a", a), ("Ha", ha), ("rotated", rot))}
        with torch.no_grad():
            p_rot = float(torch.sigmoid(rot @ w))
            p_a = float(torch.sigmoid(a @ w))
            theta_pred = float(editor.theta(a.to(next(editor.parameters()).device)))
        probs = self._next_token_probs(layer, example, rot)
        top = torch.topk(probs, min(self.top_tokens, probs.numel()))
        tokens = tuple(self.tokenizer.decode([int(i)]) for i in top.indices)
        return Frame(
            layer,
            example,
            float(theta),
            coords,
            float(angle_between(a, ha)),
            float(a.norm()),
            float(rot.norm()),
            p_rot,
            p_a,
            theta_pred,
            tokens,
            tuple(float(x) for x in top.values),
        )

    def _next_token_probs(self, layer: int, example: int, rotated: Tensor) -> Tensor:
        ids = self._ids[example]

        def replace_last(x: Tensor) -> Tensor:
            out = x.clone()
            out[:, -1, :] = rotated.to(x.dtype).to(x.device)
            return out

        with torch.no_grad(), edit_block_outputs(self.model, {layer: replace_last}):
            logits = self.model(input_ids=ids).logits[0, -1].float()
        return torch.softmax(logits, dim=-1).cpu()

    # ---------------------------------------------------------------- drawing
    def draw(self, frame: Frame, fig: Figure | None = None) -> Figure:
        """Draw ``frame``: the plane of a and Ha (left) and the next-token distribution (right)."""
        if fig is None:
            fig = Figure(figsize=(9.0, 3.8))
        fig.clear()
        ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
        r = frame.norm_a
        t = torch.linspace(0, 2 * math.pi, 200)
        ax.plot((r * torch.cos(t)).numpy(), (r * torch.sin(t)).numpy(), color="0.85", lw=1)
        colors = {"a": "tab:red", "Ha": "tab:green", "rotated": "tab:blue"}
        for name, (x, y) in frame.coords.items():
            ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": colors[name], "lw": 2})
            ax.text(x * 1.08, y * 1.08, {"a": "a", "Ha": "Ha", "rotated": "a'"}[name], color=colors[name])
        # The angles, drawn as arcs at 60% of |a|: gamma from a to Ha, theta from a to a'.
        for name, radius, color in (("Ha", 0.55, "tab:green"), ("rotated", 0.65, "tab:blue")):
            end = math.atan2(frame.coords[name][1], frame.coords[name][0])
            arc = torch.linspace(0.0, end, 50)
            ax.plot((radius * r * torch.cos(arc)).numpy(), (radius * r * torch.sin(arc)).numpy(), color=color, lw=1)
        if frame.gamma < 0.5:  # small angles: zoom on the tips, where a, Ha and a' part
            xs = [c[0] for c in frame.coords.values()]
            ys = [c[1] for c in frame.coords.values()]
            span = max(max(xs) - min(xs), max(ys) - min(ys), 0.02 * r)
            cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
            ax.set_xlim(cx - 0.9 * span, cx + 0.9 * span)
            ax.set_ylim(cy - 0.9 * span, cy + 0.9 * span)
            zoom = " (zoomed on the tips)"
        else:
            ax.set_xlim(-1.25 * r, 1.25 * r)
            ax.set_ylim(-1.25 * r, 1.25 * r)
            zoom = ""
        ax.set_aspect("equal")
        ax.set_title(
            f"layer {frame.layer}: theta = {frame.theta:.2f} rad ({math.degrees(frame.theta):.0f} deg), "
            f"gamma = angle(a, Ha) = {frame.gamma:.3f} rad{zoom}",
            fontsize=8,
        )
        ax.set_xlabel(f"|a|={frame.norm_a:.3f}  |a'|={frame.norm_rot:.3f}  p(a')={frame.p:.3f}", fontsize=9)
        labels = [repr(tok)[1:-1] or "(empty)" for tok in frame.tokens]
        bx.barh(range(len(labels))[::-1], frame.probs, color="tab:blue")
        bx.set_yticks(range(len(labels))[::-1], labels, fontsize=8)
        bx.set_xlim(0, min(1.0, 1.3 * max(max(frame.probs), 1e-3)))
        bx.set_title("next-token probability", fontsize=9)
        fig.tight_layout()
        return fig

    def png(self, frame: Frame) -> bytes:
        """The drawing of ``frame`` as PNG bytes."""
        fig = self.draw(frame)
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()

    # ---------------------------------------------------------------- widgets
    def widget(self, layer: int | None = None, example: int = 0, theta: float = 0.0) -> Any:
        """ipywidgets sliders (layer, example, theta) above the picture and a readout; opens on
        ``most_visible()`` unless ``layer`` is given."""
        import ipywidgets as W

        if layer is None:
            layer, example = self.most_visible()
        self._widgets = {
            "layer": W.SelectionSlider(options=self.layers, value=layer, description="layer"),
            "example": W.IntSlider(value=example, min=0, max=len(self.prompts) - 1, description="example"),
            "theta": W.FloatSlider(
                value=theta, min=0.0, max=math.pi, step=math.pi / 48, description="theta (rad)", readout_format=".2f"
            ),
            "image": W.Image(format="png"),
            "readout": W.HTML(),
        }
        for key in ("layer", "example", "theta"):
            self._widgets[key].observe(lambda _change: self.update(), names="value")
        self.update()
        w = self._widgets
        return W.VBox([W.HBox([w["layer"], w["example"], w["theta"]]), w["readout"], w["image"]])

    def update(self) -> Frame:
        """Recompute the frame from the slider values and refresh the picture and readout."""
        w = self._widgets
        frame = self.frame(int(w["layer"].value), int(w["example"].value), float(w["theta"].value))
        self.last_frame = frame
        self.last_png = self.png(frame)
        w["image"].value = self.last_png
        prompt = self.prompts[frame.example]
        w["readout"].value = (
            f"<code>{_escape(prompt[-80:])}</code><br>|a| = {frame.norm_a:.4f}, |a'| = {frame.norm_rot:.4f}, "
            f"p(a) = {frame.p_original:.3f}, p(a') = {frame.p:.3f}, predicted theta = {frame.theta_pred:.3f} rad, "
            f"top token: <code>{_escape(repr(frame.tokens[0]))}</code> ({frame.probs[0]:.3f})"
        )
        return frame

    # ---------------------------------------------------------------- static player
    def animation(
        self, layer: int | None = None, example: int = 0, frames: int = 12, interval_ms: int = 400
    ) -> FuncAnimation:
        """A ``FuncAnimation`` sweeping theta from 0 to pi for one layer and example (default: the
        most visible one, ``most_visible``)."""
        if layer is None:
            layer, example = self.most_visible()
        thetas = [math.pi * i / max(frames - 1, 1) for i in range(frames)]
        data = [self.frame(layer, example, t) for t in thetas]
        fig = Figure(figsize=(9.0, 3.8))

        def draw(i: int) -> list[Any]:
            self.draw(data[i], fig)
            return []

        return FuncAnimation(fig, draw, frames=len(data), interval=interval_ms, blit=False)

    def jshtml(self, layer: int | None = None, example: int = 0, frames: int = 12) -> str:
        """The animation as self-contained HTML (``to_jshtml``) with no external link."""
        return offline_jshtml(self.animation(layer, example, frames).to_jshtml(default_mode="loop"))


def offline_jshtml(html: str) -> str:
    """Remove ``to_jshtml``'s external stylesheet link so the player needs no network."""
    return _EXTERNAL_LINK.sub("", html)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


__all__ = ["Frame", "RotationExplorer", "offline_jshtml"]
