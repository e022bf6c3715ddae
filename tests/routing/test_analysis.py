"""Divergence curves and their bootstrap intervals over aligned sequences."""
import numpy as np
import pytest

from routing.analysis import divergence_curves, divergence_intervals, sequence_divergences
from routing.divergence import entropy_normalized_jsd
from routing.stats import CorpusRouting


def corpus(q: np.ndarray, keys: list) -> CorpusRouting:
    layers, n, experts = q.shape
    return CorpusRouting(keys, q, np.zeros_like(q), np.ones(n), np.zeros((layers, n)), np.zeros((layers, n)))


def test_intervals_bracket_the_curves_and_vanish_for_identical_routing():
    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.ones(8), (3, 40))
    other = rng.dirichlet(np.ones(8), (3, 40))
    corpora = {"eng": corpus(ref, list(range(40))), "same": corpus(ref[:, ::-1], list(range(40))[::-1]),
               "other": corpus(other[:, :30], list(range(30)))}  # aligned by key, in another order; a subset
    for normalized in (True, False):
        curves = divergence_curves(corpora, "eng", normalized)
        bands = divergence_intervals(corpora, "eng", normalized, n_boot=400, seed=1)
        assert set(bands) == {"same", "other"} and bands["other"].shape == (2, 3)
        np.testing.assert_allclose(bands["same"], 0.0, atol=1e-6)
        assert np.all(bands["other"][0] < curves["other"]) and np.all(curves["other"] < bands["other"][1])
        width = bands["other"][1] - bands["other"][0]
        assert np.all(width < curves["other"])  # 30 sequences: a narrow interval around a mean far from 0
    with pytest.raises(KeyError, match="reference language"):
        divergence_intervals(corpora, "deu")


def test_sequence_divergences_are_the_terms_of_the_curve_aligned_by_key():
    rng = np.random.default_rng(1)
    ref, other = rng.dirichlet(np.ones(8), (3, 20)), rng.dirichlet(np.ones(8), (3, 20))
    corpora = {"eng": corpus(ref, list(range(20))), "x": corpus(other[:, ::-1], list(range(20))[::-1])}
    terms = sequence_divergences(corpora, "eng")["x"]
    assert terms.shape == (3, 20)
    np.testing.assert_allclose(terms.mean(1), divergence_curves(corpora, "eng")["x"], rtol=1e-6)
    np.testing.assert_allclose(terms[:, 5], np.asarray(entropy_normalized_jsd(ref[:, 5], other[:, 5])), rtol=1e-6)
