"""The paper's claims as stated tests, each giving a verdict with its interval and p-value.

A verdict is never read off a point estimate: it says "shown" (or "helps", "hurts", "beats") only when the test
rejects at ``alpha``, and "not shown" otherwise. The tests:

- **U shape** (claim 1) of one language's divergence-from-reference curve over MoE layers, from per-sequence
  divergences [n, L]: the layers are split, before looking at the data, into the first quarter, the middle and
  the last quarter (q = max(1, round(L / 4)) layers at each end); the statistic is the smaller of the two rises
  ``mean(first q layers) - mean(middle)`` and ``mean(last q layers) - mean(middle)``: positive when both ends
  diverge more than the middle. (A rule such as "the minimum lies inside" would pass any zig-zag curve, whose
  lowest layer is inside by chance.) One-sided percentile bootstrap over sequences: p = (1 + #{rise* <= 0}) /
  (1 + resamples). Across languages, Holm's step-down correction; the claim is shown when more than half of the
  languages are U-shaped after correction.
- **Divergence-accuracy correlation** (claim 2): shown when Pearson r < 0 with p < alpha and its bootstrap
  interval over languages below 0 (``routing.scoring.correlate``).
- **An intervention's effect** (claim 3, steering; finetuning): from a row of
  ``routing.eval.results.paired_table``: "helps" when the paired bootstrap interval of the difference lies above
  0 and the exact McNemar p < alpha, "hurts" when it lies below 0 and p < alpha, else "no change shown".
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ALPHA = 0.05


def u_shape_test(divergence: Any, *, n_boot: int = 10_000, seed: int = 0, conf: float = 0.95) -> dict[str, Any]:
    """The U-shape test of one curve from per-sequence divergences [n, L] (L >= 3 layers, n >= 2 sequences):
    the rises of both end regions over the middle, the smaller one's percentile bootstrap interval and the
    one-sided p-value (module docstring)."""
    d = np.asarray(divergence, np.float64)
    if d.ndim != 2 or d.shape[1] < 3 or d.shape[0] < 2:
        raise ValueError(f"need per-sequence divergences [n >= 2, L >= 3], got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("divergences must be finite")
    if n_boot < 1 or not 0 < conf < 1:
        raise ValueError(f"need n_boot >= 1 and conf in (0, 1), got n_boot={n_boot}, conf={conf}")
    layers = d.shape[1]
    q = max(1, round(layers / 4))

    def rises(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [..., L] -> ([...], [...])
        middle = curves[..., q:layers - q].mean(-1)
        return curves[..., :q].mean(-1) - middle, curves[..., layers - q:].mean(-1) - middle

    mean = d.mean(0)
    first, last = rises(mean)
    rng = np.random.default_rng(seed)
    resampled = np.minimum(*rises(d[rng.integers(0, d.shape[0], (n_boot, d.shape[0]))].mean(1)))
    tail = (1 - conf) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return {"rise": float(min(first, last)), "rise_first": float(first), "rise_last": float(last),
            "rise_ci": [float(low), float(high)], "p": float((1 + np.sum(resampled <= 0)) / (1 + n_boot)),
            "regions": {"first": [0, q - 1], "middle": [q, layers - q - 1], "last": [layers - q, layers - 1]},
            "curve": mean.tolist(), "n": int(d.shape[0]), "resamples": n_boot}


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), by key."""
    order = sorted(p_values, key=lambda k: p_values[k])
    m, adjusted, running = len(order), {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[key]))
        adjusted[key] = running
    return adjusted


def u_shape_claim(per_sequence: Mapping[str, Any], *, alpha: float = ALPHA, n_boot: int = 10_000,
                  seed: int = 0) -> dict[str, Any]:
    """Claim 1 over languages (language -> per-sequence divergences [n, L]): each language's test, Holm-adjusted
    p-values, and the verdict "shown" when more than half of the languages are U-shaped after correction."""
    if not per_sequence:
        raise ValueError("no languages to test")
    tests = {lang: u_shape_test(d, n_boot=n_boot, seed=seed) for lang, d in per_sequence.items()}
    adjusted = holm({lang: t["p"] for lang, t in tests.items()})
    for lang, test in tests.items():
        test["p_holm"] = adjusted[lang]
        test["u_shaped"] = adjusted[lang] < alpha
    shown = sum(t["u_shaped"] for t in tests.values())
    return {"claim": "divergence from the reference is U-shaped over depth (first and last layers above the middle)",
            "test": "one-sided percentile bootstrap over sequences of the smaller rise of the first and last "
                    "quarter of layers over the middle, Holm-corrected over languages, "
                    f"alpha {alpha}; shown when more than half are U-shaped",
            "u_shaped": shown, "languages": len(tests),
            "verdict": "shown" if shown > len(tests) / 2 else "not shown", "per_language": tests}


def correlation_claim(result: Mapping[str, Any], *, alpha: float = ALPHA) -> dict[str, Any]:
    """Claim 2 from ``routing.scoring.correlate`` (divergence, accuracy): shown when Pearson r is negative with
    p < alpha and its bootstrap interval lies below 0."""
    r, p, ci = result["pearson_r"], result["pearson_p"], result["pearson_ci"]
    shown = r is not None and p is not None and ci[1] is not None and r < 0 and p < alpha and ci[1] < 0
    return {"claim": "languages whose middle-layer routing diverges more from the reference score lower",
            "test": f"Pearson r over languages, two-sided t-test p < {alpha} and 95% bootstrap interval below 0",
            "n": result["n"], "pearson_r": r, "pearson_p": p, "pearson_ci": ci,
            "spearman_rho": result["spearman_rho"], "spearman_p": result["spearman_p"],
            "verdict": "shown" if shown else "not shown"}


def effect_verdict(row: Mapping[str, Any], *, alpha: float = ALPHA, better: str = "helps",
                   worse: str = "hurts") -> str:
    """``better``/``worse`` when a ``paired_table`` row's difference interval excludes 0 on that side and the
    McNemar p < alpha; "no change shown" otherwise."""
    if row["mcnemar_p"] < alpha and row["difference_ci_low"] > 0:
        return better
    if row["mcnemar_p"] < alpha and row["difference_ci_high"] < 0:
        return worse
    return "no change shown"


def effect_summary(row: Mapping[str, Any], *, alpha: float = ALPHA, better: str = "helps",
                   worse: str = "hurts") -> dict[str, Any]:
    """The numbers behind `effect_verdict` and the verdict, from one ``paired_table`` row."""
    keys = ("language", "n", "base_accuracy", "steer_accuracy", "difference", "difference_ci_low",
            "difference_ci_high", "mcnemar_p")
    return {**{key: row[key] for key in keys}, "verdict": effect_verdict(row, alpha=alpha, better=better, worse=worse)}


def pooled_row(rows: Sequence[Mapping[str, Any]], language: str) -> Mapping[str, Any]:
    """The row of ``language`` (e.g. ``routing.eval.results.ALL``) in a ``paired_table``."""
    for row in rows:
        if row["language"] == language:
            return row
    raise KeyError(f"no row for {language!r} in the table")
