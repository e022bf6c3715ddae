"""The paper's claims as stated tests, each giving a verdict with its interval and p-value.

A verdict is never read off a point estimate: it says "shown" (or "helps", "hurts", "beats") only when the test
rejects at ``alpha``, and "not shown" otherwise. The tests:

- **U shape** (claim 1) of one language's divergence-from-reference curve over MoE layers, from per-sequence
  divergences [n, L]: the layers are split, before looking at the data, into the first quarter, the middle and
  the last quarter (q = max(1, round(L / 4)) layers at each end); the statistic is the smaller of the two rises
  ``mean(first q layers) - max(middle layers)`` and ``mean(last q layers) - max(middle layers)``: positive when
  both ends diverge more than every middle layer. (A rule such as "the minimum lies inside" would pass any
  zig-zag curve, whose lowest layer is inside by chance; so would a comparison with the middle's mean, when one
  middle layer dips far enough to pull it under a peak.) One-sided percentile bootstrap over sequences:
  p = (1 + #{rise* <= 0}) / (1 + resamples). Across languages, Holm's step-down correction; the claim is shown
  when more than half of the languages are U-shaped after correction.
- **Divergence-accuracy correlation** (claim 2): shown when Pearson r < 0 with p < alpha and its bootstrap
  interval over languages below 0 (``routing.scoring.correlate``).
- **An intervention's effect** (claim 3, steering; finetuning): `clustered_effect` on the outcomes of the same
  items before and after, an item's translations grouped as one unit (they are one problem, not independent
  draws): "helps" when the bootstrap interval over items lies above 0 and the sign-flip test gives p < alpha,
  "hurts" when it lies below 0 and p < alpha, else "no change shown".
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

ALPHA = 0.05


def regions(layers: int) -> dict[str, list[int]]:
    """The first quarter, the middle and the last quarter of ``layers`` (>= 3) MoE layers, as inclusive [first, last]
    ranges: q = max(1, round(layers / 4)) layers at each end."""
    if layers < 3:
        raise ValueError(f"need >= 3 layers to split into ends and a middle, got {layers}")
    q = max(1, round(layers / 4))
    return {"first": [0, q - 1], "middle": [q, layers - q - 1], "last": [layers - q, layers - 1]}


def u_shape_test(divergence: Any, *, n_boot: int = 10_000, seed: int = 0, conf: float = 0.95) -> dict[str, Any]:
    """The U-shape test of one curve from per-sequence divergences [n, L] (L >= 3 layers, n >= 2 sequences):
    the rises of both end regions' means over the highest middle layer, the smaller one's percentile bootstrap
    interval and the one-sided p-value (module docstring)."""
    d = np.asarray(divergence, np.float64)
    if d.ndim != 2 or d.shape[1] < 3 or d.shape[0] < 2:
        raise ValueError(f"need per-sequence divergences [n >= 2, L >= 3], got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("divergences must be finite")
    if n_boot < 1 or not 0 < conf < 1:
        raise ValueError(f"need n_boot >= 1 and conf in (0, 1), got n_boot={n_boot}, conf={conf}")
    layers = d.shape[1]
    parts = regions(layers)
    q = parts["first"][1] + 1

    def rises(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [..., L] -> ([...], [...])
        middle = curves[..., q:layers - q].max(-1)
        return curves[..., :q].mean(-1) - middle, curves[..., layers - q:].mean(-1) - middle

    mean = d.mean(0)
    first, last = rises(mean)
    rng = np.random.default_rng(seed)
    resampled = np.minimum(*rises(d[rng.integers(0, d.shape[0], (n_boot, d.shape[0]))].mean(1)))
    tail = (1 - conf) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return {"rise": float(min(first, last)), "rise_first": float(first), "rise_last": float(last),
            "rise_ci": [float(low), float(high)], "p": float((1 + np.sum(resampled <= 0)) / (1 + n_boot)),
            "regions": parts,
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
    if len(per_sequence) / (n_boot + 1) >= alpha:
        raise ValueError(f"n_boot {n_boot} is too small: with {len(per_sequence)} languages no Holm-adjusted "
                         f"bootstrap p-value can fall below {alpha}")
    tests = {lang: u_shape_test(d, n_boot=n_boot, seed=seed) for lang, d in per_sequence.items()}
    adjusted = holm({lang: t["p"] for lang, t in tests.items()})
    for lang, test in tests.items():
        test["p_holm"] = adjusted[lang]
        test["u_shaped"] = adjusted[lang] < alpha
    shown = sum(t["u_shaped"] for t in tests.values())
    return {"claim": "divergence from the reference is U-shaped over depth (first and last layers above the middle)",
            "test": "one-sided percentile bootstrap over sequences of the smaller rise of the first and last "
                    "quarter of layers (their means) over the highest middle layer, Holm-corrected over languages, "
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


def clustered_effect(base: Any, other: Any, *, n_boot: int = 10_000, seed: int = 0, conf: float = 0.95,
                     alpha: float = ALPHA, better: str = "helps", worse: str = "hurts") -> dict[str, Any]:
    """The effect of an intervention on 0/1 outcomes [items, k] of the same items before (``base``) and after
    (``other``), where the k columns are correlated versions of one item (its k languages, the same problem).
    Items, not cells, are the independent units: the difference of accuracy (over all cells) gets a percentile
    bootstrap interval resampling items, and a two-sided sign-flip randomisation test of the items' mean
    differences gives p = (1 + #{|T*| >= |T|}) / (1 + n_boot). ``better``/``worse`` when p < alpha and the interval
    excludes 0 on that side, else "no change shown"."""
    b, o = np.asarray(base, np.float64), np.asarray(other, np.float64)
    if b.shape != o.shape or b.ndim != 2 or b.shape[0] < 2 or b.shape[1] < 1:
        raise ValueError(f"need two outcome tables of the same shape [items >= 2, k >= 1], got {b.shape}, {o.shape}")
    if n_boot < 1 or not 0 < conf < 1:
        raise ValueError(f"need n_boot >= 1 and conf in (0, 1), got n_boot={n_boot}, conf={conf}")
    d = (o - b).mean(1)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    tail = (1 - conf) / 2
    low, high = (float(x) for x in np.quantile(boots, [tail, 1 - tail]))
    flips = (rng.integers(0, 2, (n_boot, len(d))) * 2 - 1) @ d / len(d)
    p = float((1 + np.sum(np.abs(flips) >= abs(d.mean()) - 1e-12)) / (1 + n_boot))
    verdict = better if p < alpha and low > 0 else worse if p < alpha and high < 0 else "no change shown"
    return {"items": int(b.shape[0]), "cells": int(b.size), "base_accuracy": float(b.mean()),
            "other_accuracy": float(o.mean()), "difference": float(d.mean()), "difference_ci_low": low,
            "difference_ci_high": high, "p": p, "verdict": verdict,
            "test": "items as units: bootstrap over items, two-sided sign-flip randomisation test"}

