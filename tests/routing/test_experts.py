"""Expert specialisation against loops in NumPy, selection rules and random controls."""
import numpy as np
import pytest

from routing import experts
from routing.stats import activation_rate
from routing.window import Window


def _counts(seed, L=3, N=6, E=5, k=2):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 20, N)
    counts = np.zeros((L, N, E), int)
    for layer in range(L):
        for i in range(N):
            for _ in range(lengths[i]):
                counts[layer, i, rng.choice(E, k, replace=False)] += 1
    return counts, lengths


def test_delta_is_the_difference_of_rates():
    rate, other = (activation_rate(*_counts(seed)) for seed in (0, 1))
    delta = experts.specialization(rate, other)
    np.testing.assert_allclose(delta, rate - other)
    assert np.all(np.abs(delta) <= 1)


def test_specialization_validation():
    with pytest.raises(ValueError, match="equal shape"):
        experts.specialization(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        experts.specialization(np.full((2, 3), 1.5), np.zeros((2, 3)))


DELTA = np.array(
    [
        [0.50, -0.2, 0.10, 0.00],
        [0.35, 0.60, -0.9, 0.30],
        [0.05, 0.31, 0.30, 0.45],
    ]
)


def test_select_by_tau_and_window():
    assert experts.select_experts(DELTA, tau=0.3) == [(0, 0), (1, 0), (1, 1), (2, 1), (2, 3)]
    assert experts.select_experts(DELTA, tau=0.3, layers=[2, 1]) == [(1, 0), (1, 1), (2, 1), (2, 3)]
    assert experts.select_experts(DELTA, tau=0.3, layers=Window(1, 2)) == [(1, 0), (1, 1), (2, 1), (2, 3)]
    assert experts.select_experts(DELTA, tau=0.3, layers=Window(0, 1)) == [(0, 0), (1, 0), (1, 1)]
    assert experts.select_experts(DELTA, tau=0.9) == []
    ref = sorted((int(a), int(b)) for a, b in np.argwhere(DELTA > -0.5))
    assert experts.select_experts(DELTA, tau=-0.5) == ref


def test_select_top_n():
    assert experts.select_experts(DELTA, top_n=3) == [(0, 0), (1, 1), (2, 3)]
    assert experts.select_experts(DELTA, top_n=2, layers=range(1, 3)) == [(1, 1), (2, 3)]
    # tie between (1, 3) and (2, 2) at 0.30: the earlier (layer, expert) wins
    six = experts.select_experts(DELTA, top_n=6)
    assert (1, 3) in six and (2, 2) not in six


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one"),
        ({"tau": 0.3, "top_n": 2}, "exactly one"),
        ({"tau": 1.0}, r"tau must be in \[-1, 1\)"),
        ({"tau": -1.5}, "tau must be"),
        ({"top_n": 0}, "top_n must be"),
        ({"top_n": 5, "layers": [0]}, r"top_n must be in \[1, 4\]"),
        ({"tau": 0.1, "layers": [3]}, r"layers \[3\] out of range \[0, 3\)"),
    ],
)
def test_select_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        experts.select_experts(DELTA, **kwargs)


def test_overlap():
    a, b = [(0, 1), (1, 2), (2, 3)], [(1, 2), (2, 3), (3, 0), (3, 1)]
    assert experts.overlap(a, b) == (2, 2 / 5)
    assert experts.overlap(a, []) == (0, 0.0)
    assert experts.overlap([], []) == (0, 0.0)


def test_random_experts():
    like = [(1, 0), (1, 5), (4, 2)]
    for exclude in (True, False):
        draw = experts.random_experts(like, 8, seed=3, exclude_like=exclude)
        assert draw == experts.random_experts(like, 8, seed=3, exclude_like=exclude)
        assert draw == sorted(draw) and len(set(draw)) == 3
        assert [layer for layer, _ in draw] == [1, 1, 4]
    assert not set(experts.random_experts(like, 8, seed=3)) & set(like)
    draws = {tuple(experts.random_experts(like, 8, seed=s)) for s in range(20)}
    assert len(draws) > 10
    # uniform over the 7 other experts of layer 4
    picks = np.bincount([experts.random_experts([(4, 2)], 8, seed=s)[0][1] for s in range(700)], minlength=8)
    assert picks[2] == 0 and picks.min(initial=700, where=np.arange(8) != 2) > 60
    with pytest.raises(ValueError, match="only 1 candidates"):
        experts.random_experts([(0, e) for e in range(2)], 3, seed=0)
    with pytest.raises(ValueError, match="expert 9 out of range"):
        experts.random_experts([(0, 9)], 8, seed=0)
