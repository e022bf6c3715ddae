"""Divergence curves and their bootstrap intervals over aligned sequences."""
import numpy as np
import pytest

from routing.analysis import divergence_curves, divergence_intervals
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
