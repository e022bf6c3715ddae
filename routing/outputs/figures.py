"""PNG figures, drawn with matplotlib's object API (Agg canvas; no pyplot state) and written atomically.

Every figure states what it shows without the code: axis labels name the measure, a caption (the figure's
title) names the model, the data and n, compared panels share their y-scale, legends sit outside the axes,
and intervals are drawn where the data give them. Each plotting function returns its ``Figure``.

- `plot_divergence_curves`: the paper's Figure 1, divergence from the reference language over MoE-layer
  depth, one curve per language, the middle-layer window shaded.
- `plot_expert_usage`: heatmaps of expert activation rates (languages x experts) for chosen layers.
- `plot_delta_heatmap`: Delta (task or language specialisation) per MoE layer and expert.
- `plot_steering`: baseline vs steered accuracy per language.
- `plot_correlation`: middle-layer divergence vs accuracy across languages.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from moe.atomic import atomic_path
from routing.window import Window


def _save(fig: Figure, path: str | Path, *, tight: bool = False) -> None:
    """``fig`` as a PNG at 120 dpi, atomically; ``tight`` crops the canvas to what is drawn."""
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=120, bbox_inches="tight" if tight else None)


NORMALISED_JSD = "entropy-normalised JSD"
RAW_JSD = "JSD (not normalised)"


def plot_divergence_curves(
    panels: Mapping[str, Mapping[str, np.ndarray]],
    window: Window | None,
    path: str | Path,
    *,
    reference: str,
    measure: str | Mapping[str, str],
    caption: str,
    bands: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    band_label: str = "95% bootstrap interval over passages",
) -> Figure:
    """The paper's Figure 1: one panel per entry of ``panels`` (title -> {language: [L] curve}), x = MoE layer
    (0-indexed), the mean over languages dashed, the middle ``window`` shaded.

    ``measure``: one measure for every panel (e.g. ``NORMALISED_JSD``; the panels then share their y-scale),
    or one per panel title (different measures, each on its own scale); the y-axis reads "{measure} from
    {reference}". ``caption`` names the model, the data and n. ``bands``: {title: {language: [2, L] interval}},
    shaded around those curves (``band_label`` says what they are).
    """
    measures = {title: measure for title in panels} if isinstance(measure, str) else dict(measure)
    if set(measures) != set(panels):
        raise ValueError(f"measure names panels {sorted(measures)}, but the panels are {sorted(panels)}")
    fig = Figure(figsize=(6.5 * len(panels), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=isinstance(measure, str))[0]
    for ax, (title, curves) in zip(axes, panels.items()):
        layers = np.arange(len(next(iter(curves.values()))))
        if window is not None:
            ax.axvspan(window.first - 0.5, window.last + 0.5, color="0.85",
                       label=f"middle window {window.first}-{window.last}")
        for language, curve in curves.items():
            line, = ax.plot(layers, curve, marker=".", linewidth=1.2, label=language)
            band = (bands or {}).get(title, {}).get(language)
            if band is not None:
                ax.fill_between(layers, band[0], band[1], color=line.get_color(), alpha=0.15, linewidth=0)
        ax.plot(layers, np.mean(np.stack(list(curves.values())), axis=0), "k--", linewidth=2,
                label="mean over languages")
        ax.set_title(title)
        ax.set_xlabel("MoE layer (0-indexed)")
        ax.set_ylabel(f"{measures[title]} from {reference}")
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.yaxis.set_tick_params(labelleft=True)
    if bands:
        axes[-1].fill_between([], [], [], color="C0", alpha=0.15, label=band_label)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(caption, fontsize=10)
    _save(fig, path)
    return fig


def plot_expert_usage(
    rates: Mapping[str, np.ndarray],
    layers: Sequence[int],
    path: str | Path,
    *,
    decoder_layers: Sequence[int],
    caption: str,
) -> Figure:
    """Activation rate r_k per language (rows) and expert (columns) of each MoE layer in `layers`, on one
    colour scale.

    `rates` maps language -> [L, E]; `decoder_layers[i]` labels MoE layer i with its decoder index;
    `caption` names the model, the data and n.
    """
    languages = list(rates)
    stacked = np.stack([rates[language] for language in languages], axis=1)  # [L, languages, E]
    vmax = float(np.max(stacked[list(layers)])) or 1.0
    width = max(6.0, 0.09 * stacked.shape[-1] + 2.5)
    fig = Figure(figsize=(width, 0.5 + len(layers) * (0.22 * len(languages) + 0.9)), layout="constrained")
    axes = fig.subplots(len(layers), 1, squeeze=False)[:, 0]
    for ax, layer in zip(axes, layers):
        image = ax.imshow(stacked[layer], aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax,
                          interpolation="nearest")
        ax.set_title(f"MoE layer {layer} (decoder layer {decoder_layers[layer]})", fontsize=9)
        ax.set_yticks(range(len(languages)), languages, fontsize=7)
        ax.set_xlabel("expert", fontsize=8)
    fig.colorbar(image, ax=list(axes), label="activation rate (top-k selections per token)")
    fig.suptitle(caption, fontsize=9)
    _save(fig, path)
    return fig


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _statistic(name: str, value: float | None, ci: Sequence[float | None] | None, p: float | None) -> str:
    interval = f" [{_number(ci[0])}, {_number(ci[1])}]" if ci else ""
    return f"{name} = {_number(value)}{interval}, p = {'n/a' if p is None else f'{p:.2g}'}"


def plot_delta_heatmap(delta: np.ndarray, window: Window, experts: Sequence[tuple[int, int]],
                       path: str | Path, *, title: str, caption: str, measure: str) -> Figure:
    """Delta [moe_layers, experts] as a diverging heatmap; the window outlined, selected experts dotted.

    ``title``: what is compared; ``caption``: the model, the data and n; ``measure``: the colour bar's label.
    """
    delta = np.asarray(delta, float)
    layers, num_experts = delta.shape
    limit = float(np.abs(delta).max()) or 1.0
    fig = Figure(figsize=(min(24.0, max(6.0, 0.12 * num_experts + 2.5)), max(3.0, 0.22 * layers + 1.5)))
    ax = fig.subplots()
    image = ax.imshow(delta, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.axhspan(window.first - 0.5, window.last + 0.5, fill=False, edgecolor="k", linewidth=1.5,
               label=f"window {window.first}-{window.last}")
    if experts:
        ys, xs = zip(*experts)
        ax.scatter(xs, ys, s=12, c="k", marker="o", label=f"selected ({len(experts)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer (0-indexed)")
    ax.set_title(f"{title}\n{caption}", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    fig.colorbar(image, ax=ax, label=measure)
    _save(fig, path, tight=True)
    return fig


def plot_steering(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str, caption: str) -> Figure:
    """Baseline vs steered accuracy per language (Wilson intervals), and the paired difference (bootstrap);
    ``title`` says what was steered, ``caption`` the model, the data and n."""
    languages = [row["language"] for row in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(6.0, 0.7 * len(rows) + 2.0), 7.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for offset, prefix, label in ((-0.2, "base", "baseline"), (0.2, "steer", "steered")):
        acc = np.array([row[f"{prefix}_accuracy"] for row in rows])
        err = np.array([[a - row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"] - a] for a, row in zip(acc, rows)]).T
        top.bar(x + offset, acc, width=0.4, yerr=err, capsize=3, label=label)
    top.set_ylabel("accuracy (95% Wilson interval)")
    top.set_ylim(0, 1)
    top.set_title(f"{title}\n{caption}", fontsize=9)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    diff = np.array([row["difference"] for row in rows])
    err = np.array([[d - row["difference_ci_low"], row["difference_ci_high"] - d] for d, row in zip(diff, rows)]).T
    bottom.bar(x, diff, yerr=err, capsize=3, color=["tab:green" if d >= 0 else "tab:red" for d in diff])
    bottom.axhline(0, color="k", linewidth=0.8)
    bottom.set_ylabel("accuracy, steered - baseline\n(95% paired bootstrap interval)")
    bottom.set_xticks(x, [f"{lang}\nn={row['n']}" for lang, row in zip(languages, rows)],
                      rotation=45, ha="right")
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path, tight=True)
    return fig


def plot_correlation(divergence: Mapping[str, float], accuracy: Mapping[str, float], stats: Mapping[str, Any],
                     path: str | Path, *, xlabel: str, ylabel: str, caption: str,
                     accuracy_intervals: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Per-language scatter of middle-layer divergence vs accuracy, labelled by language, with the
    least-squares line and, where given, each accuracy's interval (``accuracy_intervals``: language ->
    (low, high)). The title states ``caption`` (the model and the data), n, and Pearson r and Spearman rho
    with their p-values (and bootstrap intervals when ``stats`` has them)."""
    languages = list(divergence)
    x = np.array([divergence[lang] for lang in languages])
    y = np.array([accuracy[lang] for lang in languages])
    fig = Figure(figsize=(6.0, 4.8))
    ax = fig.subplots()
    if accuracy_intervals:
        err = np.array([[yi - accuracy_intervals[lang][0], accuracy_intervals[lang][1] - yi]
                        for lang, yi in zip(languages, y)]).T
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor="0.6", capsize=2, label="95% Wilson interval")
    ax.scatter(x, y)
    for lang, xi, yi in zip(languages, x, y):
        ax.annotate(lang, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 2)
        ax.plot(grid, slope * grid + intercept, "k--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    confidence = stats.get("bootstrap", {}).get("confidence")
    lines = [f"{caption} (n = {len(languages)} languages)",
             _statistic("Pearson r", stats["pearson_r"], stats.get("pearson_ci"), stats.get("pearson_p")) + "; "
             + _statistic("Spearman rho", stats["spearman_rho"], stats.get("spearman_ci"), stats.get("spearman_p"))]
    if confidence:
        lines.append(f"[{100 * confidence:g}% bootstrap intervals over languages]")
    ax.set_title("\n".join(lines), fontsize=9)
    ax.grid(alpha=0.3)
    if accuracy_intervals:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _save(fig, path, tight=True)
    return fig
