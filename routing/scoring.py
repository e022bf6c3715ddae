"""Evaluation maths in plain NumPy: answer extraction, intervals, paired tests, correlations."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any, NamedTuple, Sequence

import numpy as np

# A number not glued to a preceding ASCII letter or digit ("x2", "3-5" -> 5, "e5" are not numbers, but
# "答案是42" is). Optional minus (ASCII or U+2212), optional currency sign, then either digit groups
# separated by a comma or a (narrow/thin) no-break space, exactly three digits per group, or a plain
# digit run; then an optional decimal part ".ddd" (a period not followed by a digit ends the number).
_NUMBER = re.compile(
    r"(?<![0-9A-Za-z])(?P<sign>[-\u2212])?[$€£¥₹]?"
    r"(?P<int>\d{1,3}(?:[,\u00a0\u202f\u2009]\d{3})+(?!\d)|\d+)?(?P<frac>\.\d+)?"
)


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float


def extract_last_number(text: str) -> float | None:
    """The last number in ``text`` ("flexible extract"), or None when there is none.

    Handles "1,234" (comma thousands separators, groups of exactly three digits), "-5", "3.50",
    "is 42." (a final period is punctuation), "$1,200", "18 dollars", ".5", and Unicode decimal digits
    (e.g. Bengali or full-width). Choices: a period is always the decimal mark ("1.234" is 1.234); a comma
    not followed by exactly three digits separates numbers ("3,5" gives 5); a hyphen after a letter or
    digit is a dash, not a minus ("3-5" gives 5); no scientific notation ("1e5" gives 1).
    """
    last = None
    for m in _NUMBER.finditer(text):
        if m.group("int") is None and m.group("frac") is None:
            continue
        last = m
    if last is None:
        return None
    digits = re.sub(r"[,\u00a0\u202f\u2009]", "", last.group("int") or "0") + (last.group("frac") or "")
    value = float(digits)
    return -value if last.group("sign") else value


def numbers_match(pred: float | None, gold: float, abs_tol: float = 1e-6, rel_tol: float = 1e-9) -> bool:
    """Exact match up to float tolerance; a missing prediction never matches."""
    return pred is not None and math.isclose(pred, float(gold), rel_tol=rel_tol, abs_tol=abs_tol)


def _binary(x: Sequence, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold only booleans or 0/1")
    return a.astype(bool)


def _paired(base: Sequence, steer: Sequence) -> tuple[np.ndarray, np.ndarray]:
    b, s = _binary(base, "base"), _binary(steer, "steer")
    if b.shape != s.shape:
        raise ValueError(f"base and steer must score the same items: {b.shape} vs {s.shape}")
    return b, s


def wilson_interval(k: int, n: int, conf: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion k/n (estimate is k/n)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if not 0 < conf < 1:
        raise ValueError(f"conf must be in (0, 1), got {conf}")
    z = NormalDist().inv_cdf(0.5 + conf / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, 0.0 if k == 0 else centre - half, 1.0 if k == n else centre + half)


def mcnemar_test(base_correct: Sequence, steer_correct: Sequence) -> float:
    """Exact (binomial) two-sided McNemar p-value for paired correctness on the same items.

    With b items right only at baseline and c right only when steered, p = min(1, 2 P[X <= min(b, c)]),
    X ~ Binomial(b + c, 1/2); p = 1 when b + c = 0. Computed with exact integer arithmetic.
    """
    base, steer = _paired(base_correct, steer_correct)
    b = int(np.sum(base & ~steer))
    c = int(np.sum(~base & steer))
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def bootstrap_mean_interval(values: Any, n_boot: int = 10_000, seed: int = 0,
                            conf: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval (low, high) of the mean over the last axis of ``values`` [..., n],
    resampling its n entries with the same draws for every leading index (e.g. passages shared by layers)."""
    v = np.asarray(values, np.float64)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ValueError(f"need at least one value along the last axis, got shape {v.shape}")
    if n_boot < 1 or not 0 < conf < 1:
        raise ValueError(f"need n_boot >= 1 and conf in (0, 1), got n_boot={n_boot}, conf={conf}")
    n = v.shape[-1]
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // v.size)
    means = np.concatenate(
        [v[..., rng.integers(0, n, (min(chunk, n_boot - i), n))].mean(-1) for i in range(0, n_boot, chunk)], axis=-1)
    alpha = (1 - conf) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=-1)
    return low, high


def paired_bootstrap_ci(
    base: Sequence, steer: Sequence, n_boot: int = 10_000, seed: int = 0, conf: float = 0.95
) -> Interval:
    """Percentile bootstrap interval of accuracy(steer) - accuracy(base), resampling items jointly."""
    b, s = _paired(base, steer)
    diff = s.astype(np.float64) - b
    low, high = bootstrap_mean_interval(diff, n_boot, seed, conf)
    return Interval(float(diff.mean()), float(low), float(high))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - (
        math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Pearson r and its two-sided p-value (t test with n - 2 degrees of freedom).

    Returns (nan, nan) when either input is constant. Needs n >= 3 finite pairs.
    """
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 3:
        raise ValueError(f"need two 1-D sequences of equal length >= 3, got shapes {a.shape}, {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("inputs must be finite")
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # tested on the values: a constant's mean may not round back to it
        return math.nan, math.nan
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    r = max(-1.0, min(1.0, float(a @ b) / denom))
    df = a.size - 2
    return r, _betainc(df / 2, 0.5, 1.0 - r * r)


def rank_average(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    a = np.asarray(x, np.float64)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    ranks = np.empty(a.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman rho (Pearson on average ranks) and its t-approximation p-value, as scipy computes it."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D sequences of equal length, got shapes {a.shape}, {b.shape}")
    return pearson(rank_average(a), rank_average(b))


def bootstrap_correlation_ci(x: Sequence[float], y: Sequence[float], *, rank: bool = False, n_boot: int = 10_000,
                              seed: int = 0, conf: float = 0.95) -> tuple[Interval, int]:
    """Percentile bootstrap interval of Pearson r (Spearman rho with ``rank``), resampling pairs (e.g.
    languages) with replacement; also the number of resamples left out because x or y was constant in them.

    The estimate is the statistic on the data. NaN bounds when every resample was left out.
    """
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    estimate = (spearman if rank else pearson)(a, b)[0]
    if n_boot < 1 or not 0 < conf < 1:
        raise ValueError(f"need n_boot >= 1 and conf in (0, 1), got n_boot={n_boot}, conf={conf}")
    index = np.random.default_rng(seed).integers(0, a.size, (n_boot, a.size))
    xs, ys = a[index], b[index]
    kept = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0)
    if not kept.any():
        return Interval(estimate, math.nan, math.nan), n_boot
    xs, ys = xs[kept], ys[kept]
    if rank:
        xs, ys = np.apply_along_axis(rank_average, 1, xs), np.apply_along_axis(rank_average, 1, ys)
    xs, ys = xs - xs.mean(1, keepdims=True), ys - ys.mean(1, keepdims=True)
    r = np.clip((xs * ys).sum(1) / np.sqrt((xs * xs).sum(1) * (ys * ys).sum(1)), -1.0, 1.0)
    alpha = (1 - conf) / 2
    low, high = np.quantile(r, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high)), int(n_boot - r.size)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def correlate(divergence: Mapping[str, float], accuracy: Mapping[str, float], *, n_boot: int = 10_000,
              seed: int = 0, conf: float = 0.95) -> dict[str, Any]:
    """Pearson and Spearman correlation over the languages present in both mappings (e.g. middle-layer
    divergence and accuracy): each with its two-sided p-value (t test, n - 2 degrees of freedom) and a
    percentile bootstrap interval over languages (`bootstrap_correlation_ci`).

    Needs at least three languages; NaN (a constant input) is reported as None.
    """
    languages = [lang for lang in divergence if lang in accuracy]
    if len(languages) < 3:
        raise ValueError(f"a correlation needs >= 3 languages with both divergence and accuracy, got {languages}")
    x = [divergence[lang] for lang in languages]
    y = [accuracy[lang] for lang in languages]
    r, p = pearson(x, y)
    rho, p_rho = spearman(x, y)
    r_ci, r_dropped = bootstrap_correlation_ci(x, y, n_boot=n_boot, seed=seed, conf=conf)
    rho_ci, rho_dropped = bootstrap_correlation_ci(x, y, rank=True, n_boot=n_boot, seed=seed, conf=conf)
    return {"languages": languages, "n": len(languages), "pearson_r": _finite(r), "pearson_p": _finite(p),
            "pearson_ci": [_finite(r_ci.low), _finite(r_ci.high)],
            "spearman_rho": _finite(rho), "spearman_p": _finite(p_rho),
            "spearman_ci": [_finite(rho_ci.low), _finite(rho_ci.high)],
            "bootstrap": {"resamples": n_boot, "confidence": conf, "seed": seed, "unit": "language",
                          "dropped_constant": {"pearson": r_dropped, "spearman": rho_dropped}},
            "divergence": dict(zip(languages, x)), "accuracy": dict(zip(languages, y))}


def choose_option(option_logprobs: Sequence[Sequence[float]], length_normalized: bool = False) -> int:
    """Index of the best option, scored by the SUM of its tokens' log-probabilities.

    ``length_normalized=True`` scores by the mean per token instead. Ties go to the first option.
    """
    if len(option_logprobs) == 0:
        raise ValueError("no options")
    scores = []
    for i, lp in enumerate(option_logprobs):
        tokens = np.atleast_1d(np.asarray(lp, np.float64))
        if tokens.size == 0 or np.isnan(tokens).any():
            raise ValueError(f"option {i} has no tokens or NaN log-probabilities")
        scores.append(tokens.mean() if length_normalized else tokens.sum())
    return int(np.argmax(scores))
