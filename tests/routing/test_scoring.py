"""Evaluation maths: extraction by hand, intervals, McNemar and correlations against scipy."""
import math

import numpy as np
import pytest
from scipy import stats

from routing import scoring


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 42.", 42.0),
        ("So she pays $1,200 in total.", 1200.0),
        ("1,234,567.89 apples", 1234567.89),
        ("It drops to -5 degrees", -5.0),
        ("x = −7", -7.0),
        ("costs 3.50 dollars", 3.5),
        ("18 dollars", 18.0),
        ("5kg of flour and 12 eggs", 12.0),
        ("from 3-5 days", 5.0),
        ("first 10, then 20, finally 30", 30.0),
        ("3,5", 5.0),
        ("1.234", 1.234),
        ("1e5", 1.0),
        ("about .5 of it", 0.5),
        ("Answer: 50%.", 50.0),
        ("答案是42", 42.0),
        ("উত্তর ৪২", 42.0),
        ("１２３", 123.0),
        ("1\u202f234 €", 1234.0),
        ("version x2 and 7", 7.0),
        ("no number here", None),
        ("", None),
        ("-$5", -5.0),
        ("$-5", -5.0),
    ],
)
def test_extract_last_number(text, expected):
    assert scoring.extract_last_number(text) == expected


def test_numbers_match():
    assert scoring.numbers_match(42.0, 42)
    assert scoring.numbers_match(0.1 + 0.2, 0.3)
    assert scoring.numbers_match(-0.0, 0)
    assert not scoring.numbers_match(None, 42)
    assert not scoring.numbers_match(42.01, 42)


def test_wilson_and_paired_inputs():
    for k, n, conf in [(30, 100, 0.95), (0, 10, 0.95), (10, 10, 0.9), (1, 3, 0.99), (517, 1000, 0.95)]:
        ref = stats.binomtest(k, n).proportion_ci(conf, method="wilson")
        est, lo, hi = scoring.wilson_interval(k, n, conf)
        assert est == k / n and lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    est, lo, hi = scoring.wilson_interval(30, 100)
    assert scoring.wilson_interval(0, 10).low == 0.0 and scoring.wilson_interval(10, 10).high == 1.0
    narrow, wide = scoring.wilson_interval(30, 100, 0.5), scoring.wilson_interval(30, 100, 0.99)
    assert wide.low < lo < narrow.low < 0.3 < narrow.high < hi < wide.high
    for bad in [(5, 0), (11, 10), (-1, 10)]:
        with pytest.raises(ValueError):
            scoring.wilson_interval(*bad)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        scoring.mcnemar_test([], [])
    with pytest.raises(ValueError, match="only booleans or 0/1"):
        scoring.mcnemar_test([0, 2], [0, 1])
    with pytest.raises(ValueError, match="same items"):
        scoring.paired_bootstrap_ci([0, 1], [0, 1, 1])


@pytest.mark.parametrize("b, c", [(0, 0), (3, 3), (1, 9), (12, 4), (0, 25), (40, 61)])
def test_mcnemar_matches_binomtest(b, c):
    both, neither = 7, 5
    base = np.array([1] * b + [0] * c + [1] * both + [0] * neither, bool)
    steer = np.array([0] * b + [1] * c + [1] * both + [0] * neither, bool)
    expected = 1.0 if b + c == 0 else stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert scoring.mcnemar_test(base, steer) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="same items"):
        scoring.mcnemar_test(base, steer[:-1])


def test_paired_bootstrap_ci():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.6
    steer = np.where(rng.random(400) < 0.1, ~base, base)
    ci = scoring.paired_bootstrap_ci(base, steer, n_boot=2000, seed=1)
    assert ci == scoring.paired_bootstrap_ci(base, steer, n_boot=2000, seed=1)
    assert ci.estimate == pytest.approx(steer.mean() - base.mean())
    assert ci.low < ci.estimate < ci.high
    # close to the normal approximation of the paired difference
    d = steer.astype(float) - base
    se = d.std() / math.sqrt(d.size)
    assert ci.low == pytest.approx(d.mean() - 1.96 * se, abs=0.01)
    assert ci.high == pytest.approx(d.mean() + 1.96 * se, abs=0.01)
    assert tuple(scoring.paired_bootstrap_ci(base, base, n_boot=50)) == (0.0, 0.0, 0.0)


def test_bootstrap_mean_interval_of_many_rows_and_its_known_answers():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 1.0, (3, 500))
    low, high = scoring.bootstrap_mean_interval(values, n_boot=3000, seed=2)
    se = values.std(axis=1) / math.sqrt(500)  # the normal approximation, row by row
    np.testing.assert_allclose(low, values.mean(1) - 1.96 * se, atol=0.02)
    np.testing.assert_allclose(high, values.mean(1) + 1.96 * se, atol=0.02)
    # the same draws for every row: a row and its shifted copy get shifted intervals
    shifted = scoring.bootstrap_mean_interval(np.stack([values[0], values[0] + 1.0]), n_boot=500, seed=3)
    np.testing.assert_allclose(shifted[0][1] - shifted[0][0], 1.0)
    np.testing.assert_allclose(shifted[1][1] - shifted[1][0], 1.0)
    assert scoring.bootstrap_mean_interval(np.full(7, 0.25), n_boot=20) == (0.25, 0.25)
    one = scoring.bootstrap_mean_interval([4.0], n_boot=5)
    assert one == (4.0, 4.0)
    for bad, kwargs, match in (([], {}, "at least one value"), ([1.0], {"n_boot": 0}, "n_boot"),
                               ([1.0], {"conf": 1.0}, "conf")):
        with pytest.raises(ValueError, match=match):
            scoring.bootstrap_mean_interval(bad, **kwargs)


@pytest.mark.parametrize("n, seed", [(3, 0), (5, 1), (15, 2), (40, 3), (200, 4)])
def test_correlations_match_scipy(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    r, p = scoring.pearson(x, y)
    ref = stats.pearsonr(x, y)
    assert r == pytest.approx(ref.statistic, abs=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-15)
    xt, yt = np.round(x), np.round(y)  # with ties
    rho, p = scoring.spearman(xt, yt)
    ref = stats.spearmanr(xt, yt)
    assert rho == pytest.approx(ref.statistic, abs=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-15)


def test_correlation_edge_cases():
    assert scoring.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == (1.0, 0.0)
    assert all(math.isnan(v) for v in scoring.pearson([1, 1, 1], [1, 2, 3]))
    assert all(math.isnan(v) for v in scoring.pearson([0.1, 0.1, 0.1], [1, 2, 3]))  # mean(0.1 x 3) != 0.1
    np.testing.assert_array_equal(scoring.rank_average([3, 1, 3, 2]), stats.rankdata([3, 1, 3, 2]))
    with pytest.raises(ValueError):
        scoring.pearson([1, 2], [1, 2])
    with pytest.raises(ValueError):
        scoring.spearman([1, 2, 3], [1, 2])


def test_choose_option():
    options = [[-1.0, -1.0, -1.0], [-2.5], [-0.9, -1.2]]
    assert scoring.choose_option(options) == 2  # sums -3, -2.5, -2.1
    assert scoring.choose_option(options, length_normalized=True) == 0  # means -1, -2.5, -1.05
    assert scoring.choose_option([[-1.0], [-1.0]]) == 0
    assert scoring.choose_option([[-np.inf], [-50.0]]) == 1
    for bad in [[], [[-1.0], []], [[np.nan], [-1.0]]]:
        with pytest.raises(ValueError):
            scoring.choose_option(bad)


@pytest.mark.parametrize("rank", [False, True])
def test_bootstrap_correlation_ci_matches_a_loop_over_scipy(rank):
    """Percentile interval over resampled pairs; resamples with a constant side are left out and counted."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=6)
    y = -x + rng.normal(scale=0.5, size=6)
    y[:2] = y[2]  # ties, and constant resamples happen
    interval, dropped = scoring.bootstrap_correlation_ci(x, y, rank=rank, n_boot=2000, seed=7)
    index = np.random.default_rng(7).integers(0, 6, (2000, 6))
    statistic = stats.spearmanr if rank else stats.pearsonr
    values = [statistic(x[i], y[i])[0] for i in index if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    assert dropped == 2000 - len(values) > 0
    np.testing.assert_allclose([interval.low, interval.high], np.quantile(values, [0.025, 0.975]), rtol=1e-12)
    assert interval.estimate == pytest.approx(statistic(x, y)[0], rel=1e-12)
    assert interval.low <= interval.estimate <= interval.high


def test_bootstrap_correlation_ci_edge_cases():
    line = scoring.bootstrap_correlation_ci([1, 2, 3, 4], [3, 5, 7, 9], n_boot=500)[0]
    assert (line.estimate, line.low, line.high) == (1.0, 1.0, 1.0)
    constant, dropped = scoring.bootstrap_correlation_ci([1, 2, 3], [5, 5, 6], n_boot=3, seed=1)
    index = np.random.default_rng(1).integers(0, 3, (3, 3))
    # y is constant when only items 0 and 1 are drawn; x when one item is drawn thrice
    assert dropped == sum(set(i.tolist()) <= {0, 1} or len(set(i.tolist())) == 1 for i in index)
    assert constant.estimate == pytest.approx(stats.pearsonr([1, 2, 3], [5, 5, 6])[0])
    assert np.random.default_rng(4).integers(0, 3, (1, 3)).tolist() == [[2, 2, 2]]  # one constant resample
    none_kept, dropped = scoring.bootstrap_correlation_ci([1, 2, 3], [5, 5, 6], n_boot=1, seed=4)
    assert dropped == 1 and math.isnan(none_kept.low) and math.isnan(none_kept.high)
    with pytest.raises(ValueError, match="n_boot"):
        scoring.bootstrap_correlation_ci([1, 2, 3], [1, 2, 3], n_boot=0)


def test_correlate_over_the_languages_both_sides_have():
    divergence = {"fra_Latn": 0.3, "deu_Latn": 0.1, "zho_Hans": 0.6, "hin_Deva": 0.4, "eng_Latn": 0.0}
    accuracy = {"fra_Latn": 0.6, "deu_Latn": 0.7, "zho_Hans": 0.3, "hin_Deva": 0.5}
    result = scoring.correlate(divergence, accuracy, n_boot=500)
    assert result["languages"] == ["fra_Latn", "deu_Latn", "zho_Hans", "hin_Deva"] and result["n"] == 4
    x, y = [divergence[lang] for lang in result["languages"]], [accuracy[lang] for lang in result["languages"]]
    r, p = stats.pearsonr(x, y)
    assert result["pearson_r"] == pytest.approx(r) and result["pearson_p"] == pytest.approx(p)
    assert result["spearman_rho"] == -1.0 and result["spearman_p"] == pytest.approx(0.0, abs=1e-12)
    assert result["pearson_ci"][0] <= result["pearson_r"] <= result["pearson_ci"][1]
    assert result["bootstrap"]["resamples"] == 500 and result["divergence"] == dict(zip(result["languages"], x))
    constant = scoring.correlate(divergence, {lang: 0.5 for lang in accuracy}, n_boot=50)
    assert constant["pearson_r"] is None and constant["pearson_p"] is None and constant["pearson_ci"] == [None, None]
    with pytest.raises(ValueError, match=">= 3 languages"):
        scoring.correlate(divergence, {"fra_Latn": 0.1, "deu_Latn": 0.2})
