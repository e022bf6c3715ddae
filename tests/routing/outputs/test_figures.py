"""Figures read without the code: labels name the measure, captions name model, data and n, compared panels
share a y-scale, legends sit outside the axes, intervals are drawn (figure objects checked, not pixels)."""
import numpy as np
import pytest

from routing.outputs.figures import (NORMALISED_JSD, RAW_JSD, plot_correlation, plot_delta_heatmap,
                                     plot_divergence_curves, plot_expert_usage, plot_steering)
from routing.window import Window

CAPTION = "tiny-olmoe: FLORES-200 devtest, 6 passages in each of 3 languages"
CURVES = {"fra_Latn": np.array([0.5, 0.2, 0.1, 0.6]), "zho_Hans": np.array([0.7, 0.3, 0.2, 0.9])}


def legend_outside(fig, ax) -> bool:
    fig.canvas.draw()
    legend = next(a.get_legend() for a in fig.axes if a.get_legend() is not None)
    box, frame = legend.get_window_extent(), ax.get_window_extent()
    return box.x0 >= frame.x1 or box.y1 <= frame.y0 or box.y0 >= frame.y1


def test_compared_panels_share_the_y_scale_and_name_the_measure(tmp_path):
    panels = {"before finetuning": CURVES, "after finetuning": {k: v / 10 for k, v in CURVES.items()}}
    fig = plot_divergence_curves(panels, Window(1, 2), tmp_path / "ft.png", reference="eng_Latn",
                                 measure=NORMALISED_JSD, caption=CAPTION)
    left, right = fig.axes
    assert left.get_ylim() == right.get_ylim() and left.get_shared_y_axes().joined(left, right)
    assert left.get_ylabel() == right.get_ylabel() == "entropy-normalised JSD from eng_Latn"
    assert [left.get_title(), right.get_title()] == list(panels)
    assert fig.get_suptitle() == CAPTION and legend_outside(fig, right)
    assert (tmp_path / "ft.png").read_bytes().startswith(b"\x89PNG")


def test_different_measures_keep_their_own_scales_and_bands_are_drawn(tmp_path):
    bands = {NORMALISED_JSD: {lang: np.stack([c - 0.05, c + 0.05]) for lang, c in CURVES.items()}}
    raw = {k: v * 0.01 for k, v in CURVES.items()}
    fig = plot_divergence_curves({NORMALISED_JSD: CURVES, RAW_JSD: raw}, None, tmp_path / "d.png",
                                 reference="eng_Latn", measure={NORMALISED_JSD: NORMALISED_JSD, RAW_JSD: RAW_JSD},
                                 caption=CAPTION, bands=bands)
    left, right = fig.axes
    assert not left.get_shared_y_axes().joined(left, right) and left.get_ylim() != right.get_ylim()
    assert right.get_ylabel() == "JSD (not normalised) from eng_Latn"
    assert len(left.collections) == 2 and len(right.collections) == 1  # a band per language; the legend's patch
    low, high = left.get_ylim()
    assert low <= 0.05 and high >= 0.95  # the bands are inside the axes
    assert "95% bootstrap interval over passages" in [t.get_text() for t in right.get_legend().get_texts()]
    with pytest.raises(ValueError, match="measure names panels"):
        plot_divergence_curves({NORMALISED_JSD: CURVES}, None, tmp_path / "x.png", reference="eng_Latn",
                               measure={RAW_JSD: RAW_JSD}, caption=CAPTION)


def table_row(language, n, base, steer):
    return {"language": language, "n": n, "base_accuracy": base, "base_ci_low": base - 0.1,
            "base_ci_high": base + 0.1, "steer_accuracy": steer, "steer_ci_low": steer - 0.1,
            "steer_ci_high": steer + 0.1, "difference": steer - base, "difference_ci_low": steer - base - 0.05,
            "difference_ci_high": steer - base + 0.05}


def test_steering_figure_names_measure_model_data_and_n(tmp_path):
    rows = [table_row("fra_Latn", 40, 0.5, 0.6), table_row("all", 80, 0.45, 0.5)]
    fig = plot_steering(rows, tmp_path / "s.png", title="belebele: soft steering", caption="tiny: belebele, 40 items")
    top, bottom = fig.axes
    assert top.get_ylabel() == "accuracy (95% Wilson interval)" and "paired bootstrap" in bottom.get_ylabel()
    assert "tiny: belebele, 40 items" in top.get_title() and "soft steering" in top.get_title()
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["fra_Latn\nn=40", "all\nn=80"]
    assert legend_outside(fig, top)


def test_correlation_figure_shows_r_its_interval_p_and_accuracy_intervals(tmp_path):
    divergence = {"a": 0.1, "b": 0.2, "c": 0.4}
    accuracy = {"a": 0.8, "b": 0.6, "c": 0.3}
    stats = {"pearson_r": -0.99, "pearson_ci": [-1.0, -0.9], "pearson_p": 0.03, "spearman_rho": -1.0,
             "spearman_ci": [-1.0, -1.0], "spearman_p": 0.0, "bootstrap": {"confidence": 0.95}}
    fig = plot_correlation(divergence, accuracy, stats, tmp_path / "c.png", xlabel=f"mean {NORMALISED_JSD}",
                           ylabel="BELEBELE accuracy (baseline)", caption="tiny: BELEBELE, 40 items per language",
                           accuracy_intervals={k: (v - 0.1, v + 0.1) for k, v in accuracy.items()})
    ax = fig.axes[0]
    title = ax.get_title()
    assert "tiny: BELEBELE, 40 items per language (n = 3 languages)" in title
    assert "Pearson r = -0.99 [-1.00, -0.90], p = 0.03" in title and "95% bootstrap intervals" in title
    assert ax.get_ylabel() == "BELEBELE accuracy (baseline)" and NORMALISED_JSD in ax.get_xlabel()
    assert len(ax.containers) == 1 and legend_outside(fig, ax)  # the error bars


def test_heatmaps_name_the_measure_and_the_data(tmp_path):
    delta = np.array([[0.1, -0.2], [0.0, 0.3]])
    fig = plot_delta_heatmap(delta, Window(0, 1), [(1, 1)], tmp_path / "h.png", title="Delta: mgsm vs FLORES",
                             caption="tiny: 4 mgsm sequences, 2 FLORES passages",
                             measure="Delta = activation rate on mgsm - on English FLORES")
    ax, colorbar = fig.axes
    assert "4 mgsm sequences" in ax.get_title() and colorbar.get_ylabel().startswith("Delta = activation rate")
    rates = {"eng_Latn": np.full((2, 4), 0.25), "fra_Latn": np.full((2, 4), 0.5)}
    fig = plot_expert_usage(rates, [0, 1], tmp_path / "u.png", decoder_layers=[0, 1], caption=CAPTION)
    assert fig.get_suptitle() == CAPTION
    assert fig.axes[-1].get_ylabel() == "activation rate (top-k selections per token)"
