"""In-graph routing statistics against plain NumPy references, with padded masks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from routing.stats import (
    CorpusRouting,
    activation_rate,
    sample_token_pairs,
    sequence_distributions,
    sequence_statistics,
)

TOP_K = 2
MASK = np.array(
    [
        [1, 1, 1, 1, 1, 1, 1],  # full
        [1, 1, 1, 1, 0, 0, 0],  # right padding
        [0, 0, 1, 1, 1, 1, 1],  # left padding
        [1, 0, 1, 1, 0, 1, 0],  # scattered
        [0, 0, 0, 1, 0, 0, 0],  # one real token
        [0, 0, 0, 0, 0, 0, 0],  # no real token
    ],
    dtype=bool,
)


def random_logits(seed: int, shape: tuple[int, ...] = (3, 6, 7, 6)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 2


def np_top_k_set(z: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-z, kind="stable")[:k].tolist())


def np_reference(logits: np.ndarray, mask: np.ndarray, k: int):
    """q, counts, lengths and entropy with explicit loops in float64."""
    layers, batch, seq, experts = logits.shape
    q = np.zeros((layers, batch, experts))
    counts = np.zeros((layers, batch, experts), np.int64)
    ent = np.zeros((layers, batch))
    lengths = mask.sum(-1)
    for l in range(layers):
        for b in range(batch):
            for t in range(seq):
                if not mask[b, t]:
                    continue
                z = logits[l, b, t].astype(np.float64)
                q[l, b] += np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                for e in np_top_k_set(z, k):
                    counts[l, b, e] += 1
            if lengths[b]:
                q[l, b] /= lengths[b]
            ent[l, b] = -sum(x * math.log(x + 1e-10) for x in q[l, b])
    return q, counts, lengths, ent


def test_q_counts_entropy_match_numpy() -> None:
    logits = random_logits(0)
    stats = sequence_statistics(logits, MASK, TOP_K)
    q, counts, lengths, ent = np_reference(logits, MASK, TOP_K)
    np.testing.assert_allclose(stats.q, q, atol=1e-6)
    np.testing.assert_array_equal(stats.counts, counts)
    np.testing.assert_array_equal(stats.lengths, lengths)
    np.testing.assert_allclose(stats.entropy, ent, atol=1e-5)
    assert stats.q.dtype == jnp.float32 and stats.counts.dtype == jnp.int32
    assert stats.lengths.dtype == jnp.int32
    assert not np.any(np.asarray(stats.q[:, -1]))  # no real token: zeros, not NaN


def test_low_precision_logits_and_int_mask() -> None:
    logits = random_logits(1)
    low = jnp.asarray(logits, jnp.bfloat16)
    stats = sequence_statistics(low, MASK.astype(np.int32), TOP_K)
    q, counts, _, _ = np_reference(np.asarray(low.astype(jnp.float32)), MASK, TOP_K)
    assert stats.q.dtype == jnp.float32
    np.testing.assert_allclose(stats.q, q, atol=1e-6)
    np.testing.assert_array_equal(stats.counts, counts)


def test_pairs_are_distinct_real_tokens() -> None:
    first, second = sample_token_pairs(MASK, 200, jax.random.PRNGKey(3))
    first, second = np.asarray(first), np.asarray(second)
    for b in range(4):  # rows with >= 2 real tokens
        assert MASK[b, first[b]].all() and MASK[b, second[b]].all()
        assert (first[b] != second[b]).all()
    real = np.flatnonzero(MASK[3])
    seen = set(zip(first[3].tolist(), second[3].tolist()))
    assert seen == {(i, j) for i in real for j in real if i != j}  # every ordered pair is reachable


def test_consistency_matches_numpy_on_same_pairs() -> None:
    logits, key, num_pairs = random_logits(2), jax.random.PRNGKey(7), 16
    stats = sequence_statistics(logits, MASK, TOP_K, num_pairs=num_pairs, key=key)
    first, second = map(np.asarray, sample_token_pairs(MASK, num_pairs, key))
    for l in range(logits.shape[0]):
        for b in range(MASK.shape[0]):
            if MASK[b].sum() < 2:
                assert np.isnan(stats.consistency[l, b])
                continue
            scores = []
            for i, j in zip(first[b], second[b]):
                a, c = np_top_k_set(logits[l, b, i], TOP_K), np_top_k_set(logits[l, b, j], TOP_K)
                scores.append(len(a & c) / len(a | c))
            np.testing.assert_allclose(stats.consistency[l, b], np.mean(scores), rtol=1e-6)


def test_consistency_extremes() -> None:
    experts = 4
    same = np.random.default_rng(4).normal(size=(1, 2, 5, experts)) * 0.1
    same[..., :TOP_K] += 10.0  # every token picks experts {0, 1}
    stats = sequence_statistics(same, MASK[1:3, :5], TOP_K)
    np.testing.assert_array_equal(stats.consistency, 1.0)

    disjoint = np.zeros((1, 1, 3, experts), np.float32)
    disjoint[0, 0, 0, :2] = 5.0  # token 0 picks {0, 1}
    disjoint[0, 0, 2, 2:] = 5.0  # token 2 picks {2, 3}; token 1 is padding
    stats = sequence_statistics(disjoint, np.array([[1, 0, 1]]), TOP_K)
    np.testing.assert_array_equal(stats.consistency, 0.0)


def test_padding_invariance() -> None:
    logits = random_logits(5, (2, 1, 4, 6))
    alone = sequence_statistics(logits, np.ones((1, 4)), TOP_K)
    batch = random_logits(6, (2, 3, 7, 6))
    batch[:, 1, 3:] = logits[:, 0]  # left-padded copy in the middle of a batch
    mask = np.array([[1] * 7, [0, 0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0]])
    padded = sequence_statistics(batch, mask, TOP_K)
    np.testing.assert_allclose(padded.q[:, 1], alone.q[:, 0], atol=1e-6)
    np.testing.assert_allclose(padded.entropy[:, 1], alone.entropy[:, 0], atol=1e-6)
    np.testing.assert_array_equal(padded.counts[:, 1], alone.counts[:, 0])


def test_activation_rate_leaves_out_empty_sequences() -> None:
    """r[l, k] = mean over sequences with real tokens of counts / length, against loops in float64."""
    logits = random_logits(8)
    stats = sequence_statistics(logits, MASK, TOP_K)
    _, counts, lengths, _ = np_reference(logits, MASK, TOP_K)
    rate = activation_rate(stats.counts, stats.lengths)
    for layer in range(counts.shape[0]):
        for e in range(counts.shape[2]):
            expected = np.mean([counts[layer, i, e] / lengths[i] for i in range(5)])  # row 5 has no real token
            assert rate[layer, e] == pytest.approx(expected, rel=1e-12)
    assert rate.dtype == np.float64 and np.allclose(rate.sum(-1), TOP_K)  # every token activates top_k experts
    corpus = CorpusRouting([(i,) for i in range(6)], *(np.asarray(x) for x in (stats.q, stats.counts, stats.lengths,
                                                                               stats.entropy, stats.consistency)))
    np.testing.assert_array_equal(corpus.activation_rate, rate)


@pytest.mark.parametrize("counts, lengths, message", [
    (np.zeros((2, 3)), np.ones(3), r"\[L, N, E\]"),
    (np.zeros((2, 3, 4)), np.ones(2), r"\[L, N, E\]"),
    (np.full((2, 3, 4), 2), np.ones(3), "counts must lie"),
    (np.zeros((2, 3, 4)), np.array([1, -1, 1]), "lengths must be >= 0"),
    (np.zeros((2, 3, 4)), np.zeros(3), "no sequence with real tokens"),
    (np.zeros((2, 0, 4)), np.zeros(0), "no sequence with real tokens"),
])
def test_activation_rate_validation(counts, lengths, message) -> None:
    with pytest.raises(ValueError, match=message):
        activation_rate(counts, lengths)


def test_sequence_distributions_ignore_padding() -> None:
    logits = jax.random.normal(jax.random.PRNGKey(2), (2, 1, 5, 4))
    mask = jnp.asarray([[0, 0, 1, 1, 1]])
    q = sequence_distributions(logits, mask)
    np.testing.assert_allclose(q, jax.nn.softmax(logits[:, :, 2:], -1).mean(2), rtol=1e-6)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 5, 4\) vs \(3, 6\)"):
        sequence_statistics(np.zeros((2, 3, 5, 4)), np.ones((3, 6)), TOP_K)
    with pytest.raises(ValueError, match="top_k"):
        sequence_statistics(np.zeros((2, 3, 5, 4)), np.ones((3, 5)), 5)
