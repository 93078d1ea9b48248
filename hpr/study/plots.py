"""Figures of the book (matplotlib/seaborn). Each function returns a ``Figure``; nothing is shown."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure


def _fig(w: float = 8.0, h: float = 3.5) -> Figure:
    sns.set_theme(style="whitegrid", context="notebook")
    return Figure(figsize=(w, h), layout="constrained")


def show(fig: Figure, dpi: int = 90) -> None:
    """Display ``fig`` as a PNG in the notebook (independent of the matplotlib backend)."""
    import io

    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    display(Image(buf.getvalue()))


def coefficient_of_variation(values: Sequence[float] | np.ndarray) -> float:
    """std / mean of ``values`` (unitless); NaN for an empty or zero-mean input."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or arr.mean() == 0:
        return float("nan")
    return float(arr.std() / arr.mean())


def norm_boxplots(pos: Mapping[int, np.ndarray], neg: Mapping[int, np.ndarray], title: str = "") -> Figure:
    """Per-layer box plots of activation norms for positive and negative answers (Figure 3)."""
    fig = _fig(max(6.0, 0.35 * len(pos) + 2), 3.6)
    ax = fig.subplots()
    layers = sorted(pos)
    x = np.arange(len(layers))
    for off, data, color, label in ((-0.18, pos, "tab:green", "positive"), (0.18, neg, "tab:red", "negative")):
        bp = ax.boxplot(
            [np.asarray(data[i]) for i in layers], positions=x + off, widths=0.3, showfliers=False, patch_artist=True
        )
        for b in bp["boxes"]:
            b.set_facecolor(color)
            b.set_alpha(0.5)
        ax.plot([], [], color=color, lw=6, alpha=0.5, label=label)
    ax.set_xticks(x, [str(i) for i in layers], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("activation norm")
    ax.set_title(title or "activation norms per layer")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def norm_histograms(norms: Mapping[str, np.ndarray], title: str = "") -> Figure:
    """Overlaid norm distributions, e.g. original vs edited by each method (Figure 4)."""
    fig = _fig(7.0, 3.4)
    ax = fig.subplots()
    for name, vals in norms.items():
        # cut=0: the density stops at the smallest and largest norm seen (a norm is never negative)
        sns.kdeplot(np.asarray(vals, dtype=float), ax=ax, label=name, fill=True, alpha=0.2, warn_singular=False, cut=0)
    ax.set_xlabel("activation norm")
    ax.set_xlim(left=0)
    ax.set_title(textwrap.fill(title or "norm distributions", 70), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def probe_accuracy(acc: Mapping[int, float], selected: Sequence[int], title: str = "") -> Figure:
    """Validation probe accuracy per layer, the selected top-k layers highlighted (Figure 2)."""
    fig = _fig(max(5.0, 0.3 * len(acc) + 2), 3.2)
    ax = fig.subplots()
    layers = sorted(acc)
    colors = ["tab:orange" if i in set(selected) else "tab:blue" for i in layers]
    ax.bar([str(i) for i in layers], [100 * acc[i] for i in layers], color=colors)
    ax.axhline(50, color="0.5", ls="--", lw=1)
    ax.set_xlabel("layer")
    ax.set_ylabel("probe accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "probe accuracy per layer (orange: selected)")
    ax.tick_params(axis="x", labelsize=7)
    return fig


def loss_curves(
    history: Mapping[str, Mapping[int, Sequence[float]]] | Mapping[str, Sequence[Sequence[float]]],
    layers: Sequence[int],
    title: str = "",
) -> Figure:
    """Per-epoch training loss (and its BCE/MSE parts) of the given layers."""
    fig = _fig(9.0, 3.0)
    axes = fig.subplots(1, len(history), squeeze=False)[0]
    for ax, (name, per_layer) in zip(axes, history.items(), strict=False):
        seq = per_layer if isinstance(per_layer, Mapping) else dict(enumerate(per_layer))
        for j, layer in enumerate(layers):
            key = layer if layer in seq else j
            if key in seq:
                ys = [float(v) for v in seq[key]]  # type: ignore[union-attr]
                ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=f"layer {layer}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "training loss")
    return fig


def angle_scatter(pred: np.ndarray, target: np.ndarray, title: str = "") -> Figure:
    """Predicted vs target rotation angle (radians) for negative activations."""
    fig = _fig(4.2, 4.0)
    ax = fig.subplots()
    ax.scatter(np.asarray(target), np.asarray(pred), s=6, alpha=0.4)
    hi = float(max(np.max(target, initial=0.1), np.max(pred, initial=0.1)))
    ax.plot([0, hi], [0, hi], color="0.4", ls="--", lw=1)
    ax.set_xlabel("target angle (rad)")
    ax.set_ylabel("predicted angle (rad)")
    ax.set_title(title or "predicted vs target angle")
    return fig


def k_curve(
    ks: Sequence[int], values: Mapping[str, Sequence[float]], base: Mapping[str, float] | None = None, title: str = ""
) -> Figure:
    """Metric values (percent) of HPR editing the top k layers, k = 1..N (Figure 6)."""
    fig = _fig(6.0, 3.4)
    ax = fig.subplots()
    for i, (name, ys) in enumerate(values.items()):
        line = ax.plot(list(ks), [100 * y for y in ys], marker="o", label=f"HPR {name}")
        if base and name in base:
            ax.axhline(
                100 * base[name], color=line[0].get_color(), ls=":", lw=1, label=f"base {name}" if i < 9 else None
            )
    ax.set_xlabel("number of edited layers k")
    ax.set_ylabel("score (%)")
    ax.set_title(title or "HPR with k edited layers")
    ax.legend(fontsize=8)
    return fig


def _mark_selected(ax: Any, selected: Sequence[int]) -> None:
    for layer in selected:
        ax.axvline(layer, color="tab:orange", alpha=0.25, lw=6)


def angle_fit_per_layer(fit: Any, selected: Sequence[int], title: str = "") -> Figure:
    """Mean target and predicted angle (radians) per layer, from ``hpr.evaluation.analysis.angle_fit_per_layer``;
    selected layers shaded."""
    fig = _fig(7.0, 3.2)
    ax = fig.subplots()
    ax.plot(fit["layer"], fit["mean_target"], marker="o", ms=3, label="mean target angle")
    ax.plot(fit["layer"], fit["mean_pred"], marker="o", ms=3, label="mean predicted angle")
    ax.plot(fit["layer"], fit["mean_abs_error"], ls="--", lw=1, label="mean |pred - target|")
    _mark_selected(ax, selected)
    ax.set_xlabel("layer")
    ax.set_ylabel("angle (rad)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "predicted vs target angle per layer", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def plane_assumption(plane: Any, selected: Sequence[int], title: str = "") -> Figure:
    """Share of |a+| in span{a-, Ha-} (left) and gamma vs target angle in radians (right) per layer,
    from ``hpr.analysis.plane_assumption``; selected layers shaded."""
    fig = _fig(9.0, 3.2)
    left, right = fig.subplots(1, 2)
    left.plot(plane["layer"], plane["mean_share"], marker="o", ms=3, label="mean")
    left.plot(plane["layer"], plane["median_share"], ls="--", lw=1, label="median")
    left.set_ylim(0, 1.02)
    left.set_ylabel("share of |a+| in the plane")
    right.plot(plane["layer"], plane["mean_gamma"], marker="o", ms=3, label="gamma = angle(a-, Ha-)")
    right.plot(plane["layer"], plane["mean_target"], marker="o", ms=3, label="target angle(a-, a+)")
    right.set_ylabel("radians")
    for ax in (left, right):
        _mark_selected(ax, selected)
        ax.set_xlabel("layer")
        ax.legend(fontsize=7)
    fig.suptitle(title or "the plane assumption", fontsize=10)
    return fig


def layer_sweep(df: Any, base: Mapping[str, float], selected: Sequence[int], title: str = "") -> Figure:
    """MC1/MC2 (percent) of HPR editing one layer at a time (columns ``layer``, ``MC1 (%)``,
    ``MC2 (%)``), the base model's scores (fractions) dotted, selected layers shaded."""
    fig = _fig(7.0, 3.2)
    ax = fig.subplots()
    for name in ("MC1", "MC2"):
        line = ax.plot(df["layer"], df[f"{name} (%)"], marker="o", ms=3, label=f"HPR k=1 {name}")
        if name in base:
            ax.axhline(100 * base[name], color=line[0].get_color(), ls=":", lw=1, label=f"base {name}")
    _mark_selected(ax, selected)
    ax.set_xlabel("edited layer")
    ax.set_ylabel("score (%)")
    ax.set_title(title or "HPR at k = 1 on each layer", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def table1_figure(
    cells: Mapping[str, Mapping[str, tuple[float, float | None] | None]],
    paper: Mapping[str, Mapping[str, Mapping[str, float]]],
    title: str = "",
) -> Figure:
    """Table 1 as a picture: per metric (MC1, MC2), one bar per method with its standard error, and
    the paper's values for the same method as markers (one marker style per paper model).

    ``cells``: metric -> method -> ``(value %, stderr %)`` of ours (None: not run);
    ``paper``: metric -> paper model -> method -> value %.
    """
    metrics = list(cells)
    methods = list(dict.fromkeys(m for metric in metrics for m in cells[metric]))
    fig = _fig(max(6.0, 0.9 * len(methods) + 2), 3.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    markers = ["D", "^", "s", "o"]
    for ax, metric in zip(axes, metrics, strict=True):
        xs = np.arange(len(methods))
        vals = [cells[metric].get(m) for m in methods]
        ax.bar(
            xs,
            [v[0] if v else 0.0 for v in vals],
            color="tab:blue",
            alpha=0.75,
            label="ours",
            yerr=[(v[1] or 0.0) if v else 0.0 for v in vals],
            capsize=3,
        )
        for j, (model, per) in enumerate((paper.get(metric) or {}).items()):
            pts = [(x, per[m]) for x, m in zip(xs, methods, strict=True) if m in per]
            if pts:
                ax.scatter(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker=markers[j % len(markers)],
                    s=28,
                    color="black",
                    facecolors="none" if j else "black",
                    zorder=3,
                    label=f"paper: {model}",
                )
        ax.set_xticks(xs, methods, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(metric)
    axes[-1].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(textwrap.fill(title, 90), fontsize=10)
    return fig


__all__ = [
    "angle_fit_per_layer",
    "table1_figure",
    "angle_scatter",
    "plane_assumption",
    "coefficient_of_variation",
    "k_curve",
    "layer_sweep",
    "loss_curves",
    "norm_boxplots",
    "norm_histograms",
    "probe_accuracy",
    "show",
]
