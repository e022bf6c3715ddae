"""The claims' tests: known answers on constructed curves and tables."""
from __future__ import annotations

import numpy as np
import pytest

from routing.claims import clustered_effect, correlation_claim, holm, regions, u_shape_claim, u_shape_test
from routing.scoring import correlate


def _sequences(curve, n=200, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(curve)[None, :] + noise * rng.standard_normal((n, len(curve)))


def test_u_shape_needs_both_end_regions_above_every_middle_layer():
    u = u_shape_test(_sequences([0.6, 0.5, 0.3, 0.2, 0.2, 0.3, 0.4, 0.5]), n_boot=2000)
    assert u["p"] < 0.001 and u["rise_ci"][0] > 0 and u["regions"] == {"first": [0, 1], "middle": [2, 5],
                                                                         "last": [6, 7]}
    mean = _sequences([0.6, 0.5, 0.3, 0.2, 0.2, 0.3, 0.4, 0.5]).mean(0)
    assert u["rise_first"] == pytest.approx(mean[:2].mean() - mean[2:6].max())
    assert u["rise_last"] == pytest.approx(mean[6:].mean() - mean[2:6].max())
    for curve in ([0.6, 0.5, 0.4, 0.3, 0.3, 0.2, 0.2, 0.1],  # falling: the last layers are the lowest
                  [0.3] * 8,  # flat
                  [0.2, 0.3, 0.5, 0.6, 0.6, 0.5, 0.3, 0.2],  # peaked in the middle
                  [0.36, 0.53, 0.16, 0.35, 0.36, 0.53, 0.38, 0.23],  # zig-zag whose minimum lies inside
                  # zig-zags with both ends above the middle's mean, but a middle layer as high as the ends
                  [0.58, 0.60, 0.43, 0.68, 0.32, 0.17, 0.40, 0.61],
                  [0.20, 0.05, 0.07, 0.17, 0.11, 0.04, 0.19, 0.07]):
        assert u_shape_test(_sequences(curve), n_boot=2000)["p"] > 0.05, curve


def test_u_shape_p_value_is_the_bootstrap_tail_share():
    d = _sequences([0.31, 0.3, 0.3], n=30, noise=0.05, seed=3)  # a weak rise: p strictly between
    result = u_shape_test(d, n_boot=500, seed=7)
    draws = np.random.default_rng(7).integers(0, 30, (500, 30))
    means = d[draws].mean(1)
    rises = np.minimum(means[:, 0], means[:, -1]) - means[:, 1]  # L = 3: one layer per region
    assert result["p"] == pytest.approx((1 + np.sum(rises <= 0)) / 501)
    assert 0.002 < result["p"] < 1


def test_u_shape_refuses_too_few_layers_or_sequences():
    for bad in (np.zeros((5, 2)), np.zeros((1, 4)), np.zeros(4), np.full((3, 4), np.nan)):
        with pytest.raises(ValueError):
            u_shape_test(bad)


def test_holm_known_answer():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adjusted == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})


def test_u_shape_claim_needs_a_majority_after_correction():
    u, flat = [0.6, 0.2, 0.6], [0.3, 0.3, 0.3]
    shown = u_shape_claim({"x": _sequences(u), "y": _sequences(u, seed=1), "z": _sequences(flat)}, n_boot=500)
    assert shown["verdict"] == "shown" and shown["u_shaped"] == 2
    assert not shown["per_language"]["z"]["u_shaped"]
    half = u_shape_claim({"x": _sequences(u), "z": _sequences(flat)}, n_boot=500)
    assert half["verdict"] == "not shown" and half["u_shaped"] == 1


def test_correlation_claim_needs_a_significant_negative_r():
    divergence = {f"l{i}": 0.1 * i for i in range(8)}
    falling = correlation_claim(correlate(divergence, {k: 1 - v + 0.01 * (i % 2) for i, (k, v)
                                                       in enumerate(divergence.items())}, n_boot=500))
    assert falling["verdict"] == "shown" and falling["pearson_r"] < -0.9
    rising = correlation_claim(correlate(divergence, {k: v for k, v in divergence.items()}, n_boot=500))
    assert rising["verdict"] == "not shown"
    noise = np.random.default_rng(0).random(8)
    unrelated = correlation_claim(correlate(divergence, dict(zip(divergence, noise)), n_boot=500))
    assert unrelated["pearson_p"] > 0.05 and unrelated["verdict"] == "not shown"


def test_clustered_effect_counts_problems_not_cells():
    rng = np.random.default_rng(0)
    base = (rng.random((200, 9)) < 0.5).astype(float)
    better = base.copy()
    better[:40] = 1.0  # 40 problems solved in every language
    result = clustered_effect(base, better, n_boot=2000)
    assert result["verdict"] == "helps" and result["items"] == 200 and result["cells"] == 1800
    assert result["difference"] == pytest.approx(better.mean() - base.mean())
    assert clustered_effect(better, base, n_boot=2000)["verdict"] == "hurts"
    # 9 perfectly correlated copies of 20 problems: as strong as the 20 problems alone, not as 180 items
    few = (rng.random((20, 1)) < 0.5).astype(float)
    flipped = few.copy()
    flipped[:3] = 1 - flipped[:3]
    copies = clustered_effect(np.repeat(few, 9, 1), np.repeat(flipped, 9, 1), n_boot=4000, seed=1)
    alone = clustered_effect(few, flipped, n_boot=4000, seed=1)
    assert copies["p"] == pytest.approx(alone["p"]) and copies["difference_ci_low"] == pytest.approx(
        alone["difference_ci_low"])
    same = clustered_effect(base, base, n_boot=500)
    assert same["p"] == 1.0 and same["verdict"] == "no change shown"
    with pytest.raises(ValueError, match="same shape"):
        clustered_effect(base, base[:, :3])


def test_regions_split_ends_and_middle():
    assert regions(8) == {"first": [0, 1], "middle": [2, 5], "last": [6, 7]}
    assert regions(3) == {"first": [0, 0], "middle": [1, 1], "last": [2, 2]}
    assert regions(16)["middle"] == [4, 11]
    with pytest.raises(ValueError):
        regions(2)
