"""Fixed-size key/value cache for incremental decoding: one slot per token, written left to right.

Every layer keeps `length` slots (sliding-window layers too: the window is applied by the attention mask
over slot indices, as in the uncached forward). Keys are stored after RoPE, with the model's KV heads (GQA).
The caches of a layer stack (`ModelConfig.layer_stacks`) are stacked on a leading layer axis and scanned
with its layers.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from moe.config import ModelConfig

Array = jax.Array


@flax.struct.dataclass
class LayerCache:
    """Keys and values [batch, length, kv_heads, head_dim] of one layer ([layers, ...] for a whole stack)."""

    k: Array
    v: Array

    def update(self, k: Array, v: Array, index: Array) -> tuple[Array, Array, LayerCache]:
        """Write k/v [batch, s, kv_heads, head_dim] at slots index..index+s; return all slots and the new cache."""
        start = (0, index, 0, 0)
        k_all = jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), start)
        v_all = jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), start)
        return k_all, v_all, LayerCache(k_all, v_all)


@flax.struct.dataclass
class KVCache:
    """The stacked caches of every layer stack, which slots hold real (non-padding) tokens, the next slot."""

    stacks: tuple[LayerCache, ...]  # one per layer stack, k/v [stack_layers, batch, length, kv_heads, head_dim]
    valid: Array  # [batch, length] bool
    index: Array  # int32 scalar: the next slot to write (the same for every layer)

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    @classmethod
    def create(cls, config: ModelConfig, batch: int, length: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
        """An empty cache of `length` slots per layer."""
        def empty(layers: int) -> Array:
            return jnp.zeros((layers, batch, length, config.num_kv_heads, config.head_dim), dtype)
        stacks = tuple(LayerCache(empty(len(s)), empty(len(s))) for s in config.layer_stacks)
        return cls(stacks, jnp.zeros((batch, length), bool), jnp.zeros((), jnp.int32))

    def mark(self, attention_mask: Array) -> KVCache:
        """Record attention_mask [batch, s] for slots index..index+s (before the layers write them)."""
        valid = jax.lax.dynamic_update_slice(self.valid, attention_mask.astype(bool), (0, self.index))
        return self.replace(valid=valid)
