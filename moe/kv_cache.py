"""Fixed-size key/value cache for incremental decoding: one slot per token, written left to right.

Every layer keeps `length` slots (sliding-window layers too: the window is applied by the attention mask
over slot indices, as in the uncached forward). Keys are stored after RoPE, with the model's KV heads (GQA).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from moe.config import ModelConfig

Array = jax.Array


@flax.struct.dataclass
class LayerCache:
    """Keys and values of one attention layer, [batch, length, kv_heads, head_dim]; `index` is the next slot."""

    k: Array
    v: Array
    index: Array  # int32 scalar

    def update(self, k: Array, v: Array) -> tuple[Array, Array, LayerCache]:
        """Write k/v [batch, s, kv_heads, head_dim] at slots index..index+s; return all slots and the new cache."""
        start = (0, self.index, 0, 0)
        k_all = jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), start)
        v_all = jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), start)
        return k_all, v_all, LayerCache(k_all, v_all, self.index + k.shape[1])


@flax.struct.dataclass
class KVCache:
    """The caches of all layers and which slots hold real (non-padding) tokens."""

    layers: tuple[LayerCache, ...]
    valid: Array  # [batch, length] bool

    @property
    def index(self) -> Array:
        """The next slot to write (the same for every layer)."""
        return self.layers[0].index

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    @classmethod
    def create(cls, config: ModelConfig, batch: int, length: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
        """An empty cache of `length` slots per layer."""
        shape = (batch, length, config.num_kv_heads, config.head_dim)
        zero = jnp.zeros((), jnp.int32)
        layers = tuple(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), zero)
                       for _ in range(config.num_layers))
        return cls(layers, jnp.zeros((batch, length), bool))

    def mark(self, attention_mask: Array) -> KVCache:
        """Record attention_mask [batch, s] for slots index..index+s (before the layers write them)."""
        valid = jax.lax.dynamic_update_slice(self.valid, attention_mask.astype(bool), (0, self.index))
        return self.replace(valid=valid)
