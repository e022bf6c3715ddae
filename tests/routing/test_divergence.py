"""Divergence measures against plain NumPy (float64) references, plus hypothesis properties."""
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.divergence import divergence_from_reference, entropy, entropy_normalized_jsd, jsd
from routing.stats import sequence_statistics


def np_entropy(p: np.ndarray) -> float:
    return -sum(x * math.log(x + 1e-10) for x in p)


def np_kl(p: np.ndarray, m: np.ndarray) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, m) if a > 0)


def np_jsd(p: np.ndarray, q: np.ndarray) -> float:
    m = np.maximum((p + q) / 2, 1e-10)
    return 0.5 * np_kl(p, m) + 0.5 * np_kl(q, m)


def np_normalized(p: np.ndarray, q: np.ndarray) -> float:
    denom = math.log(len(p)) - (np_entropy(p) + np_entropy(q)) / 2
    return np_jsd(p, q) / max(denom, 1e-6)


def np64_normalized(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(JSD, D) over the last axis in float64, vectorised: the paper's formula with its clamps, term by term."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = np.maximum((p + q) / 2, 1e-10)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1)
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum(-1)
    value = np.maximum(0.5 * kl_p + 0.5 * kl_q, 0.0)
    h = lambda x: -(x * np.log(x + 1e-10)).sum(-1)  # noqa: E731
    return value, value / np.maximum(math.log(p.shape[-1]) - (h(p) + h(q)) / 2, 1e-6)


def random_distributions(rng: np.random.Generator, shape: tuple[int, ...], zeros: bool) -> np.ndarray:
    x = rng.exponential(size=shape) ** 2
    if zeros:
        x[..., 0] = 0.0
        x *= rng.random(shape) > 0.3
        x[..., -1] += 0.1
    return x / x.sum(-1, keepdims=True)


@pytest.mark.parametrize("zeros", [False, True])
def test_measures_match_numpy(zeros: bool) -> None:
    rng = np.random.default_rng(0)
    p = random_distributions(rng, (5, 3, 8), zeros)
    q = random_distributions(rng, (5, 3, 8), zeros)
    flat_p, flat_q = p.reshape(-1, 8), q.reshape(-1, 8)
    want_h = np.array([np_entropy(a) for a in flat_p]).reshape(5, 3)
    want_jsd = np.array([np_jsd(a, b) for a, b in zip(flat_p, flat_q)]).reshape(5, 3)
    want_d = np.array([np_normalized(a, b) for a, b in zip(flat_p, flat_q)]).reshape(5, 3)
    np.testing.assert_allclose(entropy(p), want_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jsd(p, q), want_jsd, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(entropy_normalized_jsd(p, q), want_d, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        divergence_from_reference(p, q), want_d.mean(-1), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(
        divergence_from_reference(p, q, normalized=False), want_jsd.mean(-1), rtol=1e-4, atol=1e-7
    )


def test_entropy_log_clamp() -> None:
    p = np.array([0.0, 1e-12, 1.0 - 1e-12], np.float32)
    assert np.isfinite(entropy(p))
    np.testing.assert_allclose(entropy([0.0, 1e-9, 1.0]), -(1e-9 * math.log(1e-9 + 1e-10)), rtol=1e-4)


def test_identical_one_hots() -> None:
    one_hot = np.eye(6)[2]
    assert float(entropy(one_hot)) == 0.0  # log E - H = log E
    assert float(jsd(one_hot, one_hot)) == 0.0
    assert float(entropy_normalized_jsd(one_hot, one_hot)) == 0.0


def test_disjoint_one_hots() -> None:
    p, q = np.eye(6)[0], np.eye(6)[3]
    np.testing.assert_allclose(jsd(p, q), math.log(2), rtol=1e-6)
    np.testing.assert_allclose(entropy_normalized_jsd(p, q), math.log(2) / math.log(6), rtol=1e-6)


def test_mixture_clamp() -> None:
    """Entries far below 1e-10 on both sides: M is clamped, the result stays finite and matches."""
    p = np.array([1e-13, 0.0, 0.5, 0.5 - 1e-13])
    q = np.array([0.0, 1e-13, 0.25, 0.75 - 1e-13])
    np.testing.assert_allclose(jsd(p, q), np_jsd(p, q), rtol=1e-4)


def test_denominator_floor() -> None:
    """Nearly uniform P and Q: log E - mean entropy < 1e-6, so D = JSD / 1e-6."""
    d = 5e-4
    p, q = np.array([0.5 + d, 0.5 - d]), np.array([0.5 - d, 0.5 + d])
    assert math.log(2) - (np_entropy(p) + np_entropy(q)) / 2 < 1e-6
    got = entropy_normalized_jsd(p, q)
    np.testing.assert_allclose(got, jsd(p, q) / 1e-6, rtol=1e-6)
    np.testing.assert_allclose(got, np_jsd(p, q) / 1e-6, rtol=1e-3)
    np.testing.assert_allclose(
        entropy_normalized_jsd(p, q, denom_floor=0.5), np_jsd(p, q) / 0.5, rtol=1e-3
    )
    uniform = np.full(4, 0.25)
    assert float(entropy_normalized_jsd(uniform, uniform)) == 0.0


def test_jit_and_broadcast() -> None:
    rng = np.random.default_rng(1)
    p, q = random_distributions(rng, (4, 5), False), random_distributions(rng, (5,), False)
    got = jax.jit(entropy_normalized_jsd)(p, q)
    want = [np_normalized(a, q) for a in p]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got.dtype == np.float32


@pytest.mark.parametrize(
    "fn", [jsd, entropy_normalized_jsd, divergence_from_reference], ids=lambda f: f.__name__
)
def test_mismatched_shapes_raise(fn) -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\) vs \(3, 5\)"):
        fn(np.ones((3, 4)) / 4, np.ones((3, 5)) / 5)


def test_reference_shapes_must_match_exactly() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) vs \(3, 4\)"):
        divergence_from_reference(np.ones((2, 3, 4)) / 4, np.ones((3, 4)) / 4)


@st.composite
def distribution_pairs(draw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = draw(st.integers(2, 8))
    weight = st.one_of(st.just(0.0), st.floats(1e-6, 1.0))
    rows = []
    for _ in range(2):
        x = np.array(draw(st.lists(weight, min_size=size, max_size=size)))
        x[draw(st.integers(0, size - 1))] += draw(st.floats(1e-3, 1.0))
        rows.append(x / x.sum())
    permutation = np.array(draw(st.permutations(range(size))))
    return rows[0], rows[1], permutation


@settings(max_examples=60, deadline=None)
@given(distribution_pairs())
def test_normalized_jsd_properties(case) -> None:
    p, q, permutation = case
    d_pq = float(entropy_normalized_jsd(p, q))
    assert np.isfinite(d_pq) and d_pq >= 0.0
    assert d_pq == float(entropy_normalized_jsd(q, p))
    assert float(entropy_normalized_jsd(p, p)) == 0.0
    np.testing.assert_allclose(
        entropy_normalized_jsd(p[permutation], q[permutation]), d_pq, rtol=1e-4, atol=1e-6
    )


def test_tiny_entries_next_to_large_ones() -> None:
    """The cases that used to give 0: log(x / m) for x < ~6e-8 m underflowed to -inf and the JSD was clipped to 0."""
    p, q = np.array([1e-8, 1 - 1e-8]), np.array([0.5, 0.5])
    want_jsd, want_d = np64_normalized(p, q)
    assert want_jsd == pytest.approx(0.2158, abs=1e-4)
    np.testing.assert_allclose(jsd(p, q), want_jsd, rtol=1e-5)
    np.testing.assert_allclose(entropy_normalized_jsd(p, q), want_d, rtol=1e-5)
    # one language suppresses an expert (3.7e-9 where the other has 0.55), eight experts
    ref = np.array([0.55, 0.15, 0.1, 0.08, 0.05, 0.04, 0.02, 0.01])
    lang = np.array([3.7e-9, 0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05 - 3.7e-9])
    want_jsd, want_d = np64_normalized(ref, lang)
    assert want_d > 0.3
    np.testing.assert_allclose(entropy_normalized_jsd(ref, lang), want_d, rtol=1e-5)
    np.testing.assert_allclose(entropy_normalized_jsd(lang, ref), want_d, rtol=1e-5)
    # entries down to 1e-38 (float32 subnormals may flush to zero: their terms are below 1e-35)
    for exponent in (-38, -30, -20, -12, -9):
        p = np.array([10.0**exponent, 0.25, 0.75 - 10.0**exponent])
        q = np.array([0.6, 0.1, 0.3])
        want_jsd, want_d = np64_normalized(p, q)
        np.testing.assert_allclose(jsd(p, q), want_jsd, rtol=1e-5, atol=0)
        np.testing.assert_allclose(entropy_normalized_jsd(q, p), want_d, rtol=1e-5, atol=0)


@pytest.mark.parametrize("concentration", [0.01, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("num_experts", [2, 8, 64, 256])
def test_dirichlet_samples_match_float64(concentration: float, num_experts: int) -> None:
    """Small concentrations give entries spanning many orders of magnitude (and exact zeros)."""
    rng = np.random.default_rng(num_experts)
    p = rng.dirichlet(np.full(num_experts, concentration), size=(4, 50))
    q = rng.dirichlet(np.full(num_experts, concentration), size=(4, 50))
    q[:, :10] = p[:, :10]  # identical pairs
    want_jsd, want_d = np64_normalized(p, q)
    np.testing.assert_allclose(entropy(p), -(p * np.log(p + 1e-10)).sum(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jsd(p, q), want_jsd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(entropy_normalized_jsd(p, q), want_d, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(divergence_from_reference(p, q), want_d.mean(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(divergence_from_reference(p, q, normalized=False), want_jsd.mean(-1), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("delta", [1e-1, 1e-2, 1e-3, 1e-4])
def test_nearly_equal_distributions_keep_relative_accuracy(delta: float) -> None:
    """JSD ~ delta^2 here: the terms must not cancel. The reference takes the same float32 inputs."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(64), size=200).astype(np.float32)
    q = p * (1 + delta * rng.uniform(-1, 1, p.shape)).astype(np.float32)
    q = (q / q.sum(-1, keepdims=True)).astype(np.float32)
    want_jsd, want_d = np64_normalized(p, q)
    assert want_jsd.max() < delta**2
    np.testing.assert_allclose(jsd(p, q), want_jsd, rtol=1e-4, atol=0)
    np.testing.assert_allclose(entropy_normalized_jsd(p, q), want_d, rtol=1e-4, atol=0)


def test_gradients_are_finite_at_zeros_and_tiny_entries() -> None:
    p = np.array([0.0, 1e-30, 1e-9, 0.3, 0.7 - 1e-9], np.float32)
    q = np.array([0.2, 0.0, 0.4, 0.3, 0.1], np.float32)
    for fn in (jsd, entropy_normalized_jsd):
        for grad in jax.grad(lambda a, b: fn(a, b), argnums=(0, 1))(p, q):
            assert np.isfinite(np.asarray(grad)).all()


def test_sequence_statistics_with_a_suppressed_expert_match_float64() -> None:
    """Router logits where one language pushes expert 3 to -20 in layers 0 and 2: the divergence of those
    layers from the float64 formula on the same logits (softmax over all experts, mean over real tokens)."""
    rng = np.random.default_rng(0)
    layers, batch, seq, experts = 3, 4, 10, 8
    ref_logits = rng.normal(0, 1, (layers, batch, seq, experts)).astype(np.float32)
    ref_logits[:, :, :, 3] += 2.0
    lang_logits = ref_logits + rng.normal(0, 0.3, ref_logits.shape).astype(np.float32)
    lang_logits[[0, 2], :, :, 3] = -20.0
    mask = np.ones((batch, seq), np.int32)
    mask[1, :4] = 0  # left padding
    mask[2, 7:] = 0  # right padding

    def q64(logits):
        z = logits.astype(np.float64)
        probs = np.exp(z - z.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return (probs * mask[None, :, :, None]).sum(2) / mask.sum(-1)[None, :, None]

    want = np64_normalized(q64(ref_logits), q64(lang_logits))[1].mean(-1)
    q_ref = sequence_statistics(ref_logits, mask, 2).q
    q_lang = sequence_statistics(lang_logits, mask, 2).q
    got = np.asarray(divergence_from_reference(q_ref, q_lang))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got[0] > 0.1 and got[2] > 0.1 and got[1] < got[0]
