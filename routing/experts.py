"""Expert specialisation: Delta between activation rates, expert selection and random controls (NumPy).

Activation rates r[l, k] (``routing.stats.activation_rate``) come from top-k counts reduced in the graph.
Selections are sorted lists of ``(moe_layer, expert)`` pairs, the form ``routing.steering`` accepts.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

from routing.window import Window, layer_list

Pair = tuple[int, int]


class Overlap(NamedTuple):
    intersection: int
    jaccard: float


def specialization(rate_domain: np.ndarray, rate_generic: np.ndarray) -> np.ndarray:
    """Delta[l, k] = r_k(domain or language data) - r_k(generic text), in [-1, 1]."""
    d, g = np.asarray(rate_domain, np.float64), np.asarray(rate_generic, np.float64)
    if d.ndim != 2 or d.shape != g.shape:
        raise ValueError(f"need two [L, E] rate arrays of equal shape, got {d.shape} and {g.shape}")
    if not (((0 <= d) & (d <= 1)).all() and ((0 <= g) & (g <= 1)).all()):
        raise ValueError("activation rates must lie in [0, 1]")
    return d - g


def _layers(layers: Window | Iterable[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    out = sorted({int(layer) for layer in layer_list(layers)})
    bad = [layer for layer in out if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range [0, {num_layers})")
    return out


def select_experts(
    delta: np.ndarray,
    tau: float | None = None,
    top_n: int | None = None,
    layers: Window | Iterable[int] | None = None,
) -> list[Pair]:
    """Experts within ``layers`` (a window or MoE layers; default: all) with Delta > tau, or the ``top_n``
    largest Delta.

    Give exactly one of ``tau`` (in [-1, 1)) and ``top_n`` (>= 1, counted over the whole window, ties
    broken by (layer, expert) order). Returns a sorted list of (layer, expert); an empty list when no
    expert passes ``tau`` (the steering constructors then refuse it with a clear error).
    """
    d = np.asarray(delta, np.float64)
    if d.ndim != 2:
        raise ValueError(f"delta must be [L, E], got shape {d.shape}")
    if np.isnan(d).any():
        raise ValueError("delta contains NaN")
    if (tau is None) == (top_n is None):
        raise ValueError("give exactly one of tau and top_n")
    rows = _layers(layers, d.shape[0])
    sub = d[rows]
    if tau is not None:
        if not -1 <= tau < 1:
            raise ValueError(f"tau must be in [-1, 1), got {tau}")
        hits = np.argwhere(sub > tau)
    else:
        if not 1 <= top_n <= sub.size:
            raise ValueError(f"top_n must be in [1, {sub.size}] for this window, got {top_n}")
        flat = np.argsort(-sub, axis=None, kind="stable")[:top_n]
        hits = np.stack(np.unravel_index(flat, sub.shape), axis=1)
    return sorted((rows[i], int(k)) for i, k in hits)


def overlap(a: Iterable[Pair], b: Iterable[Pair]) -> Overlap:
    """Size of the intersection and Jaccard index of two selections (Jaccard 0 when both are empty)."""
    sa, sb = {tuple(p) for p in a}, {tuple(p) for p in b}
    union = len(sa | sb)
    inter = len(sa & sb)
    return Overlap(inter, inter / union if union else 0.0)


def random_experts(like: Sequence[Pair], num_experts: int, seed: int, exclude_like: bool = True) -> list[Pair]:
    """A random control: in every layer of ``like``, as many experts as ``like`` has there.

    Drawn uniformly without replacement (seeded) among the experts not in ``like`` (``exclude_like``,
    the default) or among all experts. Raises ValueError if a layer has too few candidates.
    """
    per_layer: dict[int, set[int]] = {}
    for layer, expert in like:
        if not 0 <= expert < num_experts:
            raise ValueError(f"expert {expert} out of range [0, {num_experts})")
        per_layer.setdefault(int(layer), set()).add(int(expert))
    rng = np.random.default_rng(seed)
    out: list[Pair] = []
    for layer in sorted(per_layer):
        chosen = per_layer[layer]
        pool = [e for e in range(num_experts) if not (exclude_like and e in chosen)]
        if len(pool) < len(chosen):
            raise ValueError(f"layer {layer}: {len(chosen)} experts wanted, only {len(pool)} candidates")
        out.extend((layer, int(e)) for e in rng.choice(pool, size=len(chosen), replace=False))
    return sorted(out)
