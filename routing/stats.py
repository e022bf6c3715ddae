"""Per-sequence routing statistics reduced inside the jitted graph, with padding masked out.

`sequence_statistics` turns router logits [moe_layers, batch, seq, experts] into O(layers x batch x
experts) summaries, so large corpora never hold per-token routing on the host. `CorpusRouting` keeps those
summaries for every sequence of a corpus on the host; `activation_rate` is the paper's r_k.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from functools import partial

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from routing.divergence import entropy as _entropy


@flax.struct.dataclass
class SequenceStats:
    """Routing summaries of one batch (L = MoE layers, B = sequences, E = experts).

    q: [L, B, E] float32, mean over real tokens of softmax(raw logits) over all experts
        (all zeros for a sequence without real tokens).
    counts: [L, B, E] int32, number of real tokens whose top-k set contains each expert.
    lengths: [B] int32, number of real tokens.
    entropy: [L, B] float32, H(q) (0 for a sequence without real tokens).
    consistency: [L, B] float32, mean Jaccard similarity of the top-k sets of sampled pairs of
        distinct real tokens (NaN for sequences with fewer than 2 real tokens).
    """

    q: jax.Array
    counts: jax.Array
    lengths: jax.Array
    entropy: jax.Array
    consistency: jax.Array


def top_k_multi_hot(router_logits: ArrayLike, top_k: int) -> jnp.ndarray:
    """Boolean [..., E] marking the experts among the top-k raw logits of each token."""
    logits = jnp.asarray(router_logits)
    _, indices = jax.lax.top_k(logits, top_k)
    empty = jnp.zeros(logits.shape, dtype=bool)
    return jnp.put_along_axis(empty, indices, True, axis=-1, inplace=False)


def sample_token_pairs(
    mask: ArrayLike, num_pairs: int, key: jax.Array
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Positions [B, num_pairs] of two distinct real tokens per pair, drawn uniformly with replacement.

    Works for any padding layout (left, right or scattered). Rows with fewer than 2 real tokens
    get arbitrary positions; callers must ignore them.
    """
    real = jnp.asarray(mask).astype(bool)
    batch = real.shape[0]
    lengths = real.sum(axis=-1, dtype=jnp.int32)[:, None]
    real_positions = jnp.argsort(~real, axis=-1, stable=True)  # real tokens first, in order
    key_first, key_second = jax.random.split(key)
    first = jax.random.randint(key_first, (batch, num_pairs), 0, jnp.maximum(lengths, 1))
    second = jax.random.randint(key_second, (batch, num_pairs), 0, jnp.maximum(lengths - 1, 1))
    second = second + (second >= first)  # skip the first token's rank: distinct tokens
    return (
        jnp.take_along_axis(real_positions, first, axis=-1),
        jnp.take_along_axis(real_positions, second, axis=-1),
    )


def sequence_distributions(router_logits: ArrayLike, mask: ArrayLike) -> jnp.ndarray:
    """q [L, B, E]: per sequence, the mean over its real tokens of softmax(raw logits) over all experts, in
    float32 (all zeros for a sequence without real tokens). Differentiable in the logits."""
    probs = jax.nn.softmax(jnp.asarray(router_logits, jnp.float32), axis=-1)
    real = jnp.asarray(mask).astype(bool)
    sums = jnp.einsum("lbse,bs->lbe", probs, real.astype(jnp.float32))
    return sums / jnp.maximum(real.sum(axis=-1, dtype=jnp.int32), 1)[None, :, None]


@partial(jax.jit, static_argnames=("top_k", "num_pairs"))
def sequence_statistics(
    router_logits: ArrayLike,
    mask: ArrayLike,
    top_k: int,
    *,
    num_pairs: int = 64,
    key: jax.Array | None = None,
) -> SequenceStats:
    """Per-sequence routing statistics of router logits [L, B, S, E] under a [B, S] mask (1 = real).

    Computes in float32 whatever the logits' dtype. Token pairs for `consistency` come from
    `sample_token_pairs(mask, num_pairs, key)` (default key PRNGKey(0)) and are shared by all layers.
    """
    logits = jnp.asarray(router_logits, jnp.float32)
    real = jnp.asarray(mask).astype(bool)
    if logits.ndim != 4 or real.shape != logits.shape[1:3]:
        raise ValueError(
            "router_logits must be [moe_layers, batch, seq, experts] and mask [batch, seq]: "
            f"{logits.shape} vs {real.shape}"
        )
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must be in [1, {logits.shape[-1]}], got {top_k}")
    key = jax.random.PRNGKey(0) if key is None else key

    lengths = real.sum(axis=-1, dtype=jnp.int32)
    q = sequence_distributions(logits, real)

    chosen = top_k_multi_hot(logits, top_k)
    counts = jnp.sum(chosen & real[None, :, :, None], axis=2, dtype=jnp.int32)

    first, second = sample_token_pairs(real, num_pairs, key)
    chosen_first = jnp.take_along_axis(chosen, first[None, :, :, None], axis=2)
    chosen_second = jnp.take_along_axis(chosen, second[None, :, :, None], axis=2)
    shared = jnp.sum(chosen_first & chosen_second, axis=-1)
    either = jnp.sum(chosen_first | chosen_second, axis=-1)  # >= top_k >= 1
    jaccard = jnp.mean(shared / either, axis=-1)
    consistency = jnp.where(lengths[None, :] >= 2, jaccard, jnp.nan)

    return SequenceStats(
        q=q, counts=counts, lengths=lengths, entropy=_entropy(q), consistency=consistency
    )


def activation_rate(counts: ArrayLike, lengths: ArrayLike) -> np.ndarray:
    """r[l, k]: mean over sequences of counts[l, i, k] / lengths[i] (the paper's r_k), float64 [L, E] in [0, 1].

    ``counts`` [L, N, E] are top-k counts and ``lengths`` [N] real tokens (`SequenceStats`). Sequences without
    real tokens are left out. ValueError for other shapes, counts outside [0, length], or no sequence with
    real tokens.
    """
    c = np.asarray(counts, np.float64)
    n = np.asarray(lengths, np.float64)
    if c.ndim != 3 or n.shape != (c.shape[1],):
        raise ValueError(f"need counts [L, N, E] and lengths [N], got {c.shape} and {n.shape}")
    if (n < 0).any() or (c < 0).any() or (c > n[None, :, None]).any():
        raise ValueError("counts must lie in [0, length of their sequence] and lengths must be >= 0")
    real = n > 0
    if not real.any():
        raise ValueError(f"no sequence with real tokens among {n.size}: no activation rate")
    return (c[:, real] / n[real][None, :, None]).mean(axis=1)


@dataclasses.dataclass
class CorpusRouting:
    """Per-sequence routing summaries of one corpus (e.g. one language), on the host. N = sequences, L = MoE
    layers; the fields are those of `SequenceStats`, one row per sequence."""

    keys: list[Hashable]  # alignment key of each sequence
    q: np.ndarray  # [L, N, E] expert distribution of each sequence
    counts: np.ndarray  # [L, N, E] top-k activation counts
    lengths: np.ndarray  # [N] real tokens
    entropy: np.ndarray  # [L, N]
    consistency: np.ndarray  # [L, N] (NaN for sequences shorter than 2 tokens)

    @property
    def activation_rate(self) -> np.ndarray:
        """[L, E] mean over sequences of counts / length (`activation_rate`)."""
        return activation_rate(self.counts, self.lengths)

    def aligned(self, keys: list[Hashable]) -> CorpusRouting:
        """The rows for the given keys, in that order (KeyError naming a missing key)."""
        where = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in where]
        if missing:
            raise KeyError(f"{len(missing)} alignment key(s) missing, e.g. {missing[:3]}")
        idx = np.array([where[k] for k in keys], dtype=int)
        return CorpusRouting(list(keys), self.q[:, idx], self.counts[:, idx], self.lengths[idx],
                             self.entropy[:, idx], self.consistency[:, idx])

    def summary(self) -> dict[str, np.ndarray]:
        """Per-layer means: routing entropy and token-to-token consistency."""
        return {"entropy": self.entropy.mean(axis=1), "consistency": np.nanmean(self.consistency, axis=1)}
