"""Building blocks of the decoder: norms, rotary embeddings, attention, dense MLP."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe.config import ModelConfig
from moe.kv_cache import LayerCache

Array = jax.Array


class Norm(nn.Module):
    """RMSNorm (weight only) or LayerNorm (weight and bias), computed in float32 like HF."""

    kind: str
    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (dim,), self.dtype)
        h = x.astype(jnp.float32)
        if self.kind == "rms":
            h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
            return scale * h.astype(x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (dim,), self.dtype)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class Linear(nn.Module):
    """x @ kernel (+ bias); kernel is stored [in, out]."""

    features: int
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), self.dtype)
        y = jnp.dot(x, kernel.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.dtype).astype(x.dtype)
        return y


def _yarn(config: ModelConfig, pos_freqs: Array) -> tuple[Array, float]:
    """YaRN: interpolate low frequencies by `factor`, keep high ones, ramp between; scale cos/sin (HF order of ops)."""
    p, base, dim = config.rope_param, config.rope_theta, 2 * pos_freqs.shape[0]
    factor, original = p("factor"), p("original_max_position_embeddings")

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p("attention_factor")
    if attention_factor is None:
        m, m_all = p("mscale"), p("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(p("beta_fast") or 32), correction_dim(p("beta_slow") or 1)
    if p("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def _longrope(config: ModelConfig, pos_freqs: Array, positions: Array) -> tuple[Array, Array]:
    """LongRoPE, chosen per row: long factors and long_mscale for a row whose length (its largest position + 1)
    exceeds original_max_position_embeddings, short ones otherwise; inv_freq [batch, 1, rotary_dim / 2] and
    scaling [batch, 1, 1].

    Each row's choice depends on its own real tokens only (positions come from the attention mask; padding
    repeats a row's last position or is 0), as in Microsoft's reference code, so a padded batch gives every
    row what it gets alone. (HF transformers chooses once per batch from `max(position_ids) + 1`.) Both tables
    are built and `jnp.where` picks, so the choice is traced data and never recompiles. With a KV cache, a
    decoding step chooses from the new token's position, and keys cached before a row crosses the threshold
    keep the short rotation: re-run the prefix when a generation crosses it (HF drops its cache).
    """
    p = config.rope_param
    is_long = (jnp.max(positions, axis=-1) + 1 > p("original_max_position_embeddings"))[:, None, None]
    short = 1.0 / (jnp.asarray(p("short_factor"), jnp.float32) * pos_freqs)
    long = 1.0 / (jnp.asarray(p("long_factor"), jnp.float32) * pos_freqs)
    return jnp.where(is_long, long, short), jnp.where(is_long, p("long_mscale"), p("short_mscale"))


def rope_tables(config: ModelConfig, positions: Array) -> tuple[Array, Array]:
    """cos and sin tables [batch, seq, rotary_dim] for the given integer positions [batch, seq]."""
    rotary_dim = int(config.head_dim * config.partial_rotary_factor)
    pos_freqs = config.rope_theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)
    scaling: float | Array = 1.0
    if config.rope_kind == "yarn":
        inv_freq, scaling = _yarn(config, pos_freqs)
    elif config.rope_kind == "longrope":
        inv_freq, scaling = _longrope(config, pos_freqs, positions)
    else:
        inv_freq = 1.0 / pos_freqs
        if config.rope_kind == "linear":
            inv_freq = inv_freq / config.rope_param("factor")
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * scaling, jnp.sin(emb) * scaling


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate-half rotary embedding of x [batch, seq, heads, head_dim] (the leading rotary_dim channels)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


def attention_mask(query_pos: Array, key_pos: Array, key_valid: Array, window: Array | int) -> Array:
    """Boolean [batch, q, k]: causal over array indices, keys that are real tokens, a sliding window.

    `query_pos`/`key_pos` are the array (cache slot) indices [q] and [k]; `key_valid` is [batch, k];
    `window` is a window size or 0 for full attention (a traced int32 scalar works: layers scan over it).
    """
    allowed = key_pos[None, :] <= query_pos[:, None]
    allowed = allowed & ((window <= 0) | (key_pos[None, :] > query_pos[:, None] - window))
    return allowed[None] & key_valid[:, None, :].astype(bool)


def dot_attention(q: Array, k: Array, v: Array, mask: Array, scale: float, sinks: Array | None = None) -> Array:
    """Grouped-query attention. q [b, s, h, d], k/v [b, t, kv, d], mask [b, s, t]; softmax in float32.

    `sinks` [h] are per-head logits that join the softmax and are then dropped (GPT-OSS).
    """
    b, s, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, s, kv, h // kv, d)
    logits = jnp.einsum("bskgd,btkd->bkgst", q, k).astype(jnp.float32) * scale
    big_negative = jnp.finfo(jnp.float32).min
    logits = jnp.where(mask[:, None, None, :, :], logits, big_negative)
    if sinks is not None:
        sink = jnp.broadcast_to(sinks.astype(jnp.float32).reshape(1, kv, h // kv, 1, 1), logits.shape[:-1] + (1,))
        logits = jnp.concatenate([logits, sink], axis=-1)
        probs = jax.nn.softmax(logits, axis=-1)[..., :-1]
    else:
        probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bkgst,btkd->bskgd", probs.astype(v.dtype), v)
    return out.reshape(b, s, h * d)


class Attention(nn.Module):
    """Self-attention with the family's projections, q/k norm, clipping, RoPE and optional sinks."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, cache: LayerCache | None = None,
                 cache_index: Array | None = None) -> tuple[Array, LayerCache | None]:
        """Attention of x [b, s, D] under mask [b, s, t]; with `cache`, k/v are written at slot `cache_index`."""
        c = self.config
        b, s, _ = x.shape
        q = Linear(c.num_heads * c.head_dim, c.qkv_bias, self.dtype, name="q")(x)
        k = Linear(c.num_kv_heads * c.head_dim, c.qkv_bias, self.dtype, name="k")(x)
        v = Linear(c.num_kv_heads * c.head_dim, c.qkv_bias, self.dtype, name="v")(x)
        if c.qk_norm == "projection":
            q = Norm("rms", c.norm_eps, self.dtype, name="q_norm")(q)
            k = Norm("rms", c.norm_eps, self.dtype, name="k_norm")(k)
        if c.clip_qkv is not None:
            q, k, v = (jnp.clip(t, -c.clip_qkv, c.clip_qkv) for t in (q, k, v))
        q = q.reshape(b, s, c.num_heads, c.head_dim)
        k = k.reshape(b, s, c.num_kv_heads, c.head_dim)
        v = v.reshape(b, s, c.num_kv_heads, c.head_dim)
        if c.qk_norm == "head":
            q = Norm("rms", c.norm_eps, self.dtype, name="q_norm")(q)
            k = Norm("rms", c.norm_eps, self.dtype, name="k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v, cache = cache.update(k, v, cache_index)
        sinks = self.param("sinks", nn.initializers.zeros, (c.num_heads,), self.dtype) if c.attention_sinks else None
        out = dot_attention(q, k, v, mask, 1.0 / math.sqrt(c.head_dim), sinks)
        return Linear(c.hidden_size, c.o_bias, self.dtype, name="o")(out), cache


class DenseMLP(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x))."""

    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        gate = Linear(self.hidden, dtype=self.dtype, name="gate")(x)
        up = Linear(self.hidden, dtype=self.dtype, name="up")(x)
        return Linear(x.shape[-1], dtype=self.dtype, name="down")(jax.nn.silu(gate) * up)
