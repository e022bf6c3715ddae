"""What enters the model: token ids [batch, seq] inside the vocabulary and an attention mask of 0s and 1s.

`check_inputs` is the one check that `MoeTransformer.__call__`, `moe.generate.generate` and the routing
pipelines share. Shapes are static, so they are always checked (also while tracing). Values are checked
on concrete arrays only (an eager `model.apply`, `generate` before it compiles, a pipeline's batch before
its jitted call); under `jax.jit` they become `checkify.debug_check`s, which are no-ops unless the caller
wraps the function with `jax.experimental.checkify.checkify(..., errors=checkify.user_checks)`. Values of a
global array spread over several hosts are not checked outside jit (reading them needs a collective).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


MASK_RULE = "attention_mask must hold only 0 (padding) and 1 (real token)"


def check_inputs(vocab_size: int, input_ids: Any, attention_mask: Any = None) -> None:
    """Raise ValueError naming the problem unless ``input_ids`` is an integer [batch, seq] array with seq >= 1
    and ids in [0, vocab_size), and ``attention_mask`` (if given) has its shape and only 0/1 values."""
    shape = np.shape(input_ids)
    dtype = input_ids.dtype if hasattr(input_ids, "dtype") else np.asarray(input_ids).dtype
    if len(shape) != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {shape}")
    if 0 in shape:
        raise ValueError(f"input_ids of shape {shape} is empty: give at least one row of at least one token")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"input_ids must hold integer token ids, got dtype {dtype}")
    if attention_mask is not None and np.shape(attention_mask) != shape:
        raise ValueError(f"attention_mask has shape {np.shape(attention_mask)}, input_ids {shape}: they must match")
    _check_values(input_ids, lambda ids: (ids >= 0) & (ids < vocab_size),
                  f"a token id lies outside the vocabulary [0, {vocab_size})",
                  lambda bad, n: f"token id {int(bad)} lies outside the model's vocabulary [0, {vocab_size}) "
                                 f"({n} such ids): wrong tokenizer for this model?")
    if attention_mask is not None:
        _check_values(attention_mask, lambda mask: (mask == 0) | (mask == 1), MASK_RULE,
                      lambda bad, n: f"{MASK_RULE}, found {bad.item()!r}")


def _check_values(x: Any, valid: Callable[[Any], Any], rule: str, describe: Callable[[Any, int], str]) -> None:
    """ValueError(describe(first bad value, count)) unless `valid` holds everywhere in a concrete `x`; a checkify
    check with message `rule` for a traced one; nothing for a global array spread over several hosts (reading
    its values needs a collective)."""
    if isinstance(x, jax.core.Tracer):
        checkify.debug_check(jnp.all(valid(x)), rule)
    elif not (isinstance(x, jax.Array) and not x.is_fully_addressable):
        values = np.asarray(x)
        bad = values[~valid(values)]
        if bad.size:
            raise ValueError(describe(bad[0], bad.size))
