"""Batched greedy decoding with a KV cache, compiled as one function: prefill, then a while loop over steps.

The model (its config) and `max_new_tokens` are static; params, prompts, EOS ids and the routing edit are
arguments, so new prompts or edits of the same shapes reuse the compiled loop. The edit applies at the
prefill and at every decoding step.
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import flax.struct
import jax
import jax.numpy as jnp

from moe.inputs import check_inputs
from moe.kv_cache import KVCache
from moe.model import LogitEdit, MoeTransformer

Array = jax.Array


@flax.struct.dataclass
class Generation:
    """Greedy continuations of a batch of prompts."""

    tokens: Array  # [batch, max_new_tokens] int32; pad_id after a row's EOS
    lengths: Array  # [batch] int32: tokens generated per row, its EOS included


def generate(model: MoeTransformer, params, input_ids: Array, attention_mask: Array | None = None, *,
             max_new_tokens: int, eos_id: int | Iterable[int] | None = None, pad_id: int = 0,
             edit: LogitEdit | None = None) -> Generation:
    """Greedy decoding of left-padded prompts input_ids [batch, seq] (attention_mask 1 on real tokens).

    A row stops at its first token in `eos_id` (an id or a collection of ids; None: never) and is filled
    with `pad_id` after it; the loop ends when every row has stopped or after `max_new_tokens`. Concrete
    prompts are checked (`moe.inputs.check_inputs`) before anything compiles.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_inputs(model.config.vocab_size, input_ids, attention_mask)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    eos = [] if eos_id is None else list(eos_id) if isinstance(eos_id, Iterable) else [eos_id]
    return _decode(model, max_new_tokens, params, input_ids, jnp.asarray(attention_mask, jnp.int32),
                   jnp.asarray(eos, jnp.int32), jnp.asarray(pad_id, jnp.int32), edit)


@partial(jax.jit, static_argnums=(0, 1))
def _decode(model: MoeTransformer, max_new_tokens: int, params, input_ids: Array, attention_mask: Array,
            eos: Array, pad_id: Array, edit: LogitEdit | None) -> Generation:
    batch, prompt_len = input_ids.shape
    # The last generated token is never fed back, so the cache needs one slot fewer than the full length.
    cache = KVCache.create(model.config, batch, prompt_len + max_new_tokens - 1, model.dtype)

    def step(ids: Array, mask: Array, cache: KVCache) -> tuple[Array, KVCache]:
        out = model.apply({"params": params}, ids, mask, edit, cache=cache, last_only=True)
        return jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32), out.cache

    first, cache = step(input_ids, attention_mask, cache)
    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos)

    def not_finished(state) -> Array:
        i, _, done, _ = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def decode_one(state):
        i, tokens, done, cache = state
        fed = jax.lax.dynamic_slice_in_dim(tokens, i - 1, 1, axis=1)
        token, cache = step(fed, jnp.ones_like(fed), cache)
        token = jnp.where(done, pad_id, token)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], i, axis=1)
        return i + 1, tokens, done | jnp.isin(token, eos), cache

    _, tokens, _, _ = jax.lax.while_loop(not_finished, decode_one, (jnp.int32(1), tokens, done, cache))
    is_eos = jnp.isin(tokens, eos)
    lengths = jnp.where(is_eos.any(axis=-1), jnp.argmax(is_eos, axis=-1) + 1, max_new_tokens)
    return Generation(tokens=tokens, lengths=lengths.astype(jnp.int32))
