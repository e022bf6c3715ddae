"""Routing rules: pure functions from gating logits [..., E] to (weights [..., k], expert indices [..., k]).

Each follows the order of operations of the family's HF implementation, so that top-k choices and weights
match it exactly in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe.config import ModelConfig

Array = jax.Array


def softmax_topk(logits: Array, k: int, renormalize: bool) -> tuple[Array, Array]:
    """Softmax over all experts (float32), top-k, optionally divide the k probabilities by their sum."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, index = jax.lax.top_k(probs, k)
    if renormalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, index


def topk_softmax(logits: Array, k: int) -> tuple[Array, Array]:
    """Top-k on the logits, then softmax over the k selected (GPT-OSS)."""
    values, index = jax.lax.top_k(logits, k)
    return jax.nn.softmax(values.astype(jnp.float32), axis=-1), index


def sparsemixer_top2(logits: Array, jitter: float) -> tuple[Array, Array]:
    """Phi-3.5-MoE's sparsemixer in its inference form (top-2).

    For each of two passes: take the max logit m; mask every logit with (m - z) / max(|z|, m) > 2 * jitter;
    softmax over the survivors; the weight is the winner's probability. The second pass masks the first
    winner out, while its threshold still compares the original logits z (as HF does). Not invariant to
    shifting the logits: it must see the raw (or edited) logits.
    """
    scores = logits.astype(jnp.float32)
    neg_inf = jnp.array(-jnp.inf, jnp.float32)

    def one_pass(s: Array) -> tuple[Array, Array]:
        top = jnp.max(s, axis=-1, keepdims=True)
        index = jnp.argmax(s, axis=-1)
        factor = jnp.maximum(jnp.abs(scores), top)
        masked = jnp.where((top - scores) / factor > 2 * jitter, neg_inf, s)
        probs = jax.nn.softmax(masked, axis=-1)
        return jnp.take_along_axis(probs, index[..., None], axis=-1)[..., 0], index

    w1, i1 = one_pass(scores)
    first = jax.nn.one_hot(i1, scores.shape[-1], dtype=bool)
    w2, i2 = one_pass(jnp.where(first, neg_inf, scores))
    return jnp.stack([w1, w2], axis=-1), jnp.stack([i1, i2], axis=-1).astype(jnp.int32)


def route(config: ModelConfig, logits: Array) -> tuple[Array, Array]:
    """Apply the config's routing rule; weights are float32, indices int32."""
    if config.routing_rule == "softmax_topk":
        return softmax_topk(logits, config.top_k, config.renormalize)
    if config.routing_rule == "topk_softmax":
        return topk_softmax(logits, config.top_k)
    return sparsemixer_top2(logits, config.router_jitter)
