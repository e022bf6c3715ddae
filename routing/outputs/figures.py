"""PNG figures of routing analyses, drawn with matplotlib's object API (Agg canvas; no pyplot state).

- `plot_divergence_curves`: the paper's Figure 1, divergence from the reference language over MoE-layer
  depth, one curve per language, the middle-layer window shaded.
- `plot_expert_usage`: heatmaps of expert activation rates (languages x experts) for chosen layers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from routing.store import atomic_path


def _save(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=120)


def plot_divergence_curves(
    panels: Mapping[str, Mapping[str, np.ndarray]],
    window: tuple[int, int] | None,
    path: str | Path,
    *,
    reference: str,
) -> None:
    """One panel per entry of `panels` (title -> {language: [L] curve}), x = MoE layer (0-indexed)."""
    fig = Figure(figsize=(6.5 * len(panels), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, curves) in zip(axes, panels.items()):
        layers = np.arange(len(next(iter(curves.values()))))
        if window is not None:
            ax.axvspan(window[0] - 0.5, window[1] + 0.5, color="0.85",
                       label=f"middle window {window[0]}-{window[1]}")
        for language, curve in curves.items():
            ax.plot(layers, curve, marker=".", linewidth=1.2, label=language)
        ax.plot(layers, np.mean(np.stack(list(curves.values())), axis=0), "k--", linewidth=2, label="mean")
        ax.set_title(f"{title} from {reference}")
        ax.set_xlabel("MoE layer (0-indexed)")
        ax.set_ylabel(title)
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _save(fig, path)


def plot_expert_usage(
    rates: Mapping[str, np.ndarray],
    layers: Sequence[int],
    path: str | Path,
    *,
    decoder_layers: Sequence[int],
) -> None:
    """Activation rate r_k per language (rows) and expert (columns) of each MoE layer in `layers`.

    `rates` maps language -> [L, E]; `decoder_layers[i]` labels MoE layer i with its decoder index.
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
    fig.colorbar(image, ax=list(axes), label="activation rate")
    _save(fig, path)
