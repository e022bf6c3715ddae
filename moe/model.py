"""The functional MoE decoder: one Flax module for every family, driven by ModelConfig."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from moe.config import ModelConfig
from moe.dispatch import Dispatch, expert_ffn
from moe.kv_cache import KVCache
from moe.layers import Attention, DenseMLP, Linear, Norm, rope_tables
from moe.layers import attention_mask as make_attention_mask
from moe.routing_rules import route

Array = jax.Array
# A routing edit: any pytree callable as edit(raw_logits [b, s, E], moe_layer) -> edited logits.
RoutingEdit = Callable[[Array, int], Array]


@flax.struct.dataclass
class MoeOutput:
    """What the model returns: next-token logits and the trace of raw router logits of every MoE layer."""

    logits: Array | None  # [batch, seq, vocab] float32 (None in analysis mode)
    router_logits: Array  # [moe_layers, batch, seq, experts], raw: before any edit
    cache: KVCache | None = None  # the updated cache when one was passed in


def swiglu(gate: Array, up: Array) -> Array:
    return jax.nn.silu(gate) * up


def clamped_swiglu(limit: float, alpha: float) -> Callable[[Array, Array], Array]:
    """GPT-OSS's activation: gate clamped above, up clamped both sides, (up + 1) * (gate * sigmoid(alpha * gate))."""
    def act(gate: Array, up: Array) -> Array:
        gate = jnp.minimum(gate, limit)
        up = jnp.clip(up, -limit, limit)
        return (up + 1) * (gate * jax.nn.sigmoid(gate * alpha))
    return act


class Router(nn.Module):
    """Raw gating logits: x @ W (+ bias where the family has one)."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return Linear(self.config.num_experts, self.config.router_bias, self.dtype, name="proj")(x)


class MoeBlock(nn.Module):
    """Router -> optional edit -> routing rule -> dropless expert dispatch (+ gated shared expert)."""

    config: ModelConfig
    moe_index: int
    dispatch: Dispatch = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, edit: RoutingEdit | None) -> tuple[Array, Array]:
        c = self.config
        b, s, d = x.shape
        raw = Router(c, self.dtype, name="router")(x)
        gating = raw if edit is None else edit(raw, self.moe_index)
        weights, index = route(c, gating)
        e, f = c.num_experts, c.expert_size
        init = nn.initializers.normal(0.02)
        p = {"gate": self.param("gate", init, (e, d, f), self.dtype),
             "up": self.param("up", init, (e, d, f), self.dtype),
             "down": self.param("down", init, (e, f, d), self.dtype)}
        if c.expert_bias:
            zeros = nn.initializers.zeros
            p |= {"gate_bias": self.param("gate_bias", zeros, (e, f), self.dtype),
                  "up_bias": self.param("up_bias", zeros, (e, f), self.dtype),
                  "down_bias": self.param("down_bias", zeros, (e, d), self.dtype)}
        p = {k: v.astype(x.dtype) for k, v in p.items()}
        act = swiglu if c.expert_activation == "swiglu" else clamped_swiglu(c.swiglu_limit, c.swiglu_alpha)
        flat = x.reshape(b * s, d)
        out = expert_ffn(flat, weights.reshape(b * s, -1).astype(x.dtype), index.reshape(b * s, -1), p, act,
                         self.dispatch)
        if c.shared_expert_size:
            shared = DenseMLP(c.shared_expert_size, self.dtype, name="shared_expert")(flat)
            gate = Linear(1, dtype=self.dtype, name="shared_gate")(flat)
            out = out + jax.nn.sigmoid(gate) * shared
        return out.reshape(b, s, d), raw


class DecoderLayer(nn.Module):
    config: ModelConfig
    layer: int
    dispatch: Dispatch = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, edit, cache=None):
        c = self.config
        h = Norm(c.norm, c.norm_eps, self.dtype, name="input_norm")(x)
        h, cache = Attention(c, c.sliding_windows[self.layer], self.dtype, name="attn")(h, cos, sin, mask, cache)
        x = x + h
        h = Norm(c.norm, c.norm_eps, self.dtype, name="post_norm")(x)
        if c.moe_layer_flags[self.layer]:
            moe_index = c.moe_layers.index(self.layer)
            h, raw = MoeBlock(c, moe_index, self.dispatch, self.dtype, name="moe")(h, edit)
        else:
            h, raw = DenseMLP(c.dense_size, self.dtype, name="mlp")(h), None
        return x + h, raw, cache


class MoeTransformer(nn.Module):
    """Decoder-only MoE language model.

    `apply({"params": p}, input_ids, attention_mask=None, edit=None)` returns MoeOutput. Positions are
    derived from the attention mask (cumulative count of real tokens), so left and right padding give the
    same result at real positions as the unpadded sequence.

    With `cache`, input_ids [b, s] are the next s tokens: they are written at the cache's next slots,
    `attention_mask` [b, s] marks which of them are real, and positions continue from the real tokens
    already cached. Attention is causal over slots, to real tokens only, windowed by slot index.
    """

    config: ModelConfig
    dispatch: Dispatch = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None, edit: RoutingEdit | None = None,
                 positions: Array | None = None, analysis_only: bool = False,
                 cache: KVCache | None = None) -> MoeOutput:
        c = self.config
        b, s = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, s), jnp.int32)
        if positions is None:
            seen = 0 if cache is None else jnp.sum(cache.valid, axis=-1, keepdims=True)
            positions = jnp.maximum(seen + jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        embed = self.param("embed", nn.initializers.normal(0.02), (c.vocab_size, c.hidden_size), self.dtype)
        x = embed[input_ids]
        cos, sin = rope_tables(c, positions)
        if cache is None:
            query_slots = key_slots = jnp.arange(s)
            key_valid = attention_mask
        else:
            cache = cache.mark(attention_mask)
            query_slots, key_slots, key_valid = cache.index + jnp.arange(s), jnp.arange(cache.length), cache.valid
        masks = {w: make_attention_mask(query_slots, key_slots, key_valid, w) for w in set(c.sliding_windows)}
        layer_caches = [None] * c.num_layers if cache is None else list(cache.layers)
        trace = []
        for i in range(c.num_layers):
            if analysis_only and i > c.moe_layers[-1]:
                break
            x, raw, layer_caches[i] = DecoderLayer(c, i, self.dispatch, self.dtype, name=f"layers_{i}")(
                x, cos, sin, masks[c.sliding_windows[i]], edit, layer_caches[i])
            if raw is not None:
                trace.append(raw)
        router_logits = jnp.stack(trace)
        if analysis_only:
            return MoeOutput(logits=None, router_logits=router_logits)
        if cache is not None:
            cache = cache.replace(layers=tuple(layer_caches))
        x = Norm(c.norm, c.norm_eps, self.dtype, name="final_norm")(x)
        if c.tie_embeddings:
            logits = x @ embed.T.astype(x.dtype)
        else:
            logits = Linear(c.vocab_size, c.lm_head_bias, self.dtype, name="lm_head")(x)
        return MoeOutput(logits=logits.astype(jnp.float32), router_logits=router_logits, cache=cache)
