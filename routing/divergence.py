"""Entropy, Jensen-Shannon divergence and the paper's entropy-normalised JSD over expert distributions.

All functions reduce over the last axis (experts), use natural logs, compute in float32 and are
jit-able. The clamps default to the paper's values and are keyword arguments:

- ``log_eps`` (1e-10): added inside the entropy's log, H(p) = -sum p log(p + log_eps).
- ``m_floor`` (1e-10): the mixture M = (P + Q) / 2 is clamped from below before dividing by it.
- ``denom_floor`` (1e-6): the normaliser log E - (H(P) + H(Q)) / 2 is clamped from below.
"""
import math

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


def _x_log_x_over_m(x: jnp.ndarray, x_minus_m: jnp.ndarray, m: jnp.ndarray) -> jnp.ndarray:
    """sum x log(x / m) with 0 log 0 = 0; log(x / m) is taken as log1p((x - m) / m) for accuracy."""
    positive = x > 0
    ratio = jnp.where(positive, x_minus_m / m, 0.0)  # keeps log1p (and its gradient) finite at x = 0
    return jnp.sum(jnp.where(positive, x * jnp.log1p(ratio), 0.0), axis=-1)


def jsd(p: ArrayLike, q: ArrayLike, *, m_floor: float = M_FLOOR) -> jnp.ndarray:
    """Jensen-Shannon divergence KL(P||M)/2 + KL(Q||M)/2 with M = max((P + Q)/2, m_floor).

    Finite when entries are zero. Differences from M are taken as (P - Q)/2 where M is not clamped,
    which keeps float32 accurate for nearly equal distributions. Tiny negative values from the
    clamp or rounding are clipped to 0, so identical inputs give exactly 0.
    """
    p, q = _as_pair(p, q)
    mid = 0.5 * (p + q)
    m = jnp.maximum(mid, m_floor)
    half_diff = 0.5 * (p - q)
    unclamped = mid >= m_floor
    p_minus_m = jnp.where(unclamped, half_diff, p - m)
    q_minus_m = jnp.where(unclamped, -half_diff, q - m)
    value = 0.5 * (_x_log_x_over_m(p, p_minus_m, m) + _x_log_x_over_m(q, q_minus_m, m))
    return jnp.maximum(value, 0.0)


def entropy_normalized_jsd(
    p: ArrayLike,
    q: ArrayLike,
    *,
    m_floor: float = M_FLOOR,
    log_eps: float = LOG_EPS,
    denom_floor: float = DENOM_FLOOR,
) -> jnp.ndarray:
    """D = JSD(P, Q) / max(log E - (H(P) + H(Q)) / 2, denom_floor), E = size of the last axis."""
    p, q = _as_pair(p, q)
    mean_entropy = 0.5 * (entropy(p, log_eps=log_eps) + entropy(q, log_eps=log_eps))
    denominator = jnp.maximum(math.log(p.shape[-1]) - mean_entropy, denom_floor)
    return jsd(p, q, m_floor=m_floor) / denominator


def divergence_from_reference(
    q_ref: ArrayLike,
    q_lang: ArrayLike,
    normalized: bool = True,
    *,
    m_floor: float = M_FLOOR,
    log_eps: float = LOG_EPS,
    denom_floor: float = DENOM_FLOOR,
) -> jnp.ndarray:
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
