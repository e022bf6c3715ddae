"""Entropy, Jensen-Shannon divergence and the paper's entropy-normalised JSD over expert distributions.

All functions reduce over the last axis (experts), use natural logs, compute in float32 and are
jit-able. They stay accurate (relative error ~1e-6 against float64 on the same inputs) for zero
entries, entries down to the smallest normal float32 next to large ones, nearly equal and nearly
uniform distributions. The clamps default to the paper's values and are keyword arguments:

- ``log_eps`` (1e-10): added inside the entropy's log, H(p) = -sum p log(p + log_eps).
- ``m_floor`` (1e-10): the mixture M = (P + Q) / 2 is clamped from below before dividing by it.
- ``denom_floor`` (1e-6): the normaliser log E - (H(P) + H(Q)) / 2 is clamped from below.
"""

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

LOG_EPS = 1e-10
M_FLOOR = 1e-10
DENOM_FLOOR = 1e-6


def _as_pair(p: ArrayLike, q: ArrayLike) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Both inputs as float32, after checking they share the expert axis and broadcast together."""
    p, q = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
    try:
        np.broadcast_shapes(p.shape, q.shape)
        compatible = p.ndim > 0 and q.ndim > 0 and p.shape[-1] == q.shape[-1]
    except ValueError:
        compatible = False
    if not compatible:
        raise ValueError(
            f"distributions must share the last (expert) axis and broadcast: {p.shape} vs {q.shape}"
        )
    return p, q


def entropy(p: ArrayLike, *, log_eps: float = LOG_EPS) -> jnp.ndarray:
    """H(p) = -sum p log(p + log_eps) over the last axis (zero entries contribute 0)."""
    p = jnp.asarray(p, jnp.float32)
    return -jnp.sum(p * jnp.log(p + log_eps), axis=-1)


# g(1 + u) = (1 + u) log(1 + u) - u = sum_{n >= 2} (-1)^n u^n / (n (n - 1)), used for |u| <= 1/4 (truncation < 1e-9 g)
_G_SERIES = tuple((-1) ** n / (n * (n - 1)) for n in range(2, 16))


def _g(x: jnp.ndarray, u: jnp.ndarray) -> jnp.ndarray:
    """g(x) = x log x - x + 1 >= 0 for x = 1 + u >= 0 (g(0) = 1), accurate to a few ulps even as x -> 1."""
    near = jnp.abs(u) <= 0.25
    u_near = jnp.where(near, u, 0.0)
    series = jnp.zeros_like(u)
    for coefficient in reversed(_G_SERIES):
        series = series * u_near + coefficient
    x_safe = jnp.where(x > 0, x, 1.0)
    direct = jnp.where(x > 0, x_safe * jnp.log(x_safe), 0.0) - x + 1.0
    return jnp.where(near, u_near * u_near * series, direct)


def _entropy_gap(p: jnp.ndarray, log_eps: float) -> jnp.ndarray:
    """log E - H(p) with H as in `entropy`, for p summing to 1 over its E entries.

    Summed as sum_k [g(E p_k) / E + p_k log1p(log_eps / p_k)], whose terms are all >= 0, so it keeps its
    relative accuracy when p is close to uniform (H(p) close to log E). E p_k - 1 is formed from a two-part
    1/E, so it is exact up to one rounding for any E.
    """
    size = p.shape[-1]
    inv_hi = float(np.float32(1.0 / size))
    inv_lo = 1.0 / size - inv_hi
    u = size * ((p - inv_hi) - inv_lo)
    return jnp.sum(_g(size * p, u) / size + _x_log1p_eps_over_x(p, log_eps), axis=-1)


def _x_log1p_eps_over_x(x: jnp.ndarray, eps: float) -> jnp.ndarray:
    """x log(1 + eps / x) = x log(x + eps) - x log(x) >= 0, 0 for x below the smallest normal float32.

    log1p where eps / x is small, the difference of logs where it is not (no cancellation there): both
    the value and its gradient stay finite for every x.
    """
    large = x > 1e3 * eps
    small = ~large & (x >= np.finfo(np.float32).tiny)
    x_large = jnp.where(large, x, 1.0)
    x_small = jnp.where(small, x, 1.0)
    return jnp.where(large, x_large * jnp.log1p(eps / x_large),
                     jnp.where(small, x_small * (jnp.log(x_small + eps) - jnp.log(x_small)), 0.0))


def _x_log_x_over_m(x: jnp.ndarray, m: jnp.ndarray) -> jnp.ndarray:
    """x log(x / m) elementwise, 0 where x = 0 (and a zero gradient there)."""
    positive = x > 0
    safe = jnp.where(positive, x, m)  # log(m / m) = 0 keeps the unused branch (and its gradient) finite
    return jnp.where(positive, x * jnp.log(safe / m), 0.0)


def _jsd_terms(p: ArrayLike, q: ArrayLike, *, m_floor: float = M_FLOOR) -> jnp.ndarray:
    """Per-expert terms of the JSD: (p log(p / m) + q log(q / m)) / 2 with m = max((p + q) / 2, m_floor).

    Where m is not clamped, write p = m (1 + t), q = m (1 - t) with t = (p - q) / (p + q); the term is
    m f(t) / 2 with f(t) = (1 + t) log(1 + t) + (1 - t) log(1 - t) >= 0. For |t| < 1/2 (p and q within a
    factor 3 of each other) f is computed as log1p(-t^2) + 2 t artanh(t), which keeps full relative
    accuracy as t -> 0 (f ~ t^2); otherwise, and where m is clamped, the two logs are taken directly as
    log(x / m), which stays finite and accurate for x down to the smallest float32 (x << m). No term
    cancels another, so their sum is accurate too.
    """
    p, q = _as_pair(p, q)
    total = p + q
    mid = 0.5 * total
    m = jnp.maximum(mid, m_floor)
    unclamped = mid >= m_floor
    t = jnp.where(unclamped, (p - q) / jnp.where(unclamped, total, 1.0), 0.0)
    near = unclamped & (jnp.abs(t) < 0.5)
    t_near = jnp.where(near, t, 0.0)
    near_terms = 0.5 * mid * (jnp.log1p(-t_near * t_near) + 2.0 * t_near * jnp.arctanh(t_near))
    direct_terms = 0.5 * (_x_log_x_over_m(p, m) + _x_log_x_over_m(q, m))
    return jnp.where(near, near_terms, direct_terms)


def jsd(p: ArrayLike, q: ArrayLike, *, m_floor: float = M_FLOOR) -> jnp.ndarray:
    """Jensen-Shannon divergence KL(P||M)/2 + KL(Q||M)/2 with M = max((P + Q)/2, m_floor).

    Accurate in float32 for every input (see `_jsd_terms`): zero entries, entries down to the smallest
    float32 next to large ones, and nearly equal distributions. Only the m_floor clamp can make a term
    negative (by at most m_floor / e per expert); the sum is clipped at 0, so identical inputs give 0.
    """
    return jnp.maximum(jnp.sum(_jsd_terms(p, q, m_floor=m_floor), axis=-1), 0.0)


def entropy_normalized_jsd(p: ArrayLike, q: ArrayLike, *, m_floor: float = M_FLOOR, log_eps: float = LOG_EPS,
                           denom_floor: float = DENOM_FLOOR) -> jnp.ndarray:
    """D = JSD(P, Q) / max(log E - (H(P) + H(Q)) / 2, denom_floor), E = size of the last axis.

    P and Q must be distributions (each sums to 1): the normaliser is computed as the mean of the two
    gaps log E - H(.) from terms that are all >= 0 (an identity that holds for distributions), so it
    stays accurate when P and Q are nearly uniform.
    """
    p, q = _as_pair(p, q)
    gap = 0.5 * (_entropy_gap(p, log_eps) + _entropy_gap(q, log_eps))
    return jsd(p, q, m_floor=m_floor) / jnp.maximum(gap, denom_floor)


def divergence_from_reference(q_ref: ArrayLike, q_lang: ArrayLike, normalized: bool = True, *,
                              m_floor: float = M_FLOOR, log_eps: float = LOG_EPS,
                              denom_floor: float = DENOM_FLOOR) -> jnp.ndarray:
    """Mean over aligned passages of D(q_ref_i, q_lang_i) (raw JSD when ``normalized`` is False).

    Both inputs are [..., passages, experts] with identical shapes (passage i of one is the
    translation of passage i of the other); the result is [...], e.g. per layer.
    """
    q_ref, q_lang = jnp.asarray(q_ref, jnp.float32), jnp.asarray(q_lang, jnp.float32)
    if q_ref.shape != q_lang.shape or q_ref.ndim < 2:
        raise ValueError(
            "reference and language distributions must have the same [..., passages, experts] "
            f"shape: {q_ref.shape} vs {q_lang.shape}"
        )
    if normalized:
        per_passage = entropy_normalized_jsd(
            q_ref, q_lang, m_floor=m_floor, log_eps=log_eps, denom_floor=denom_floor
        )
    else:
        per_passage = jsd(q_ref, q_lang, m_floor=m_floor)
    return jnp.mean(per_passage, axis=-1)
