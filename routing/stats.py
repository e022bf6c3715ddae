"""Per-sequence routing statistics reduced inside the jitted graph, with padding masked out.

`sequence_statistics` turns router logits [moe_layers, batch, seq, experts] into O(layers x batch x
experts) summaries, so large corpora never hold per-token routing on the host. `RoutingTotals`
sums those summaries over batches on the host for corpus-level means.
"""
import dataclasses
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
    weights = real.astype(jnp.float32)
    prob_sums = jnp.einsum("lbse,bs->lbe", jax.nn.softmax(logits, axis=-1), weights)
    q = prob_sums / jnp.maximum(lengths, 1)[None, :, None]

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


def activation_rate(counts: ArrayLike, lengths: ArrayLike) -> jnp.ndarray:
    """a_{i,k} / L_i: share of each sequence's real tokens routed to each expert, [L, B, E] in [0, 1].

    NaN for sequences without real tokens (0 / 0), so they cannot silently drag means down.
    """
    counts = jnp.asarray(counts, jnp.float32)
    lengths = jnp.asarray(lengths, jnp.float32)
    return counts / lengths[None, :, None]


@dataclasses.dataclass(frozen=True)
class RoutingTotals:
    """Host-side sums of `SequenceStats` over batches (float64), O(layers x experts).

    Sequences without real tokens are left out; consistency sums only sequences with >= 2 tokens.
    """

    num_sequences: int
    rate_sum: np.ndarray  # [L, E], sum of per-sequence activation rates
    entropy_sum: np.ndarray  # [L]
    consistency_sum: np.ndarray  # [L]
    consistency_count: np.ndarray  # [L]

    @classmethod
    def from_stats(cls, stats: SequenceStats) -> "RoutingTotals":
        """Totals of one batch."""
        lengths = np.asarray(stats.lengths)
        keep = lengths > 0
        rates = np.asarray(stats.counts, np.float64)[:, keep] / lengths[keep][None, :, None]
        consistency = np.asarray(stats.consistency, np.float64)[:, keep]
        defined = ~np.isnan(consistency)
        return cls(
            num_sequences=int(keep.sum()),
            rate_sum=rates.sum(axis=1),
            entropy_sum=np.asarray(stats.entropy, np.float64)[:, keep].sum(axis=1),
            consistency_sum=np.where(defined, consistency, 0.0).sum(axis=1),
            consistency_count=defined.sum(axis=1),
        )

    def merge(self, other: "RoutingTotals") -> "RoutingTotals":
        """Totals of both sets of sequences."""
        return RoutingTotals(
            num_sequences=self.num_sequences + other.num_sequences,
            rate_sum=self.rate_sum + other.rate_sum,
            entropy_sum=self.entropy_sum + other.entropy_sum,
            consistency_sum=self.consistency_sum + other.consistency_sum,
            consistency_count=self.consistency_count + other.consistency_count,
        )

    @property
    def activation_rate(self) -> np.ndarray:
        """r_k: mean over sequences of a_{i,k} / L_i, [L, E]."""
        return self.rate_sum / self.num_sequences

    @property
    def entropy(self) -> np.ndarray:
        """Routing entropy: mean over sequences of H(q_i), [L]."""
        return self.entropy_sum / self.num_sequences

    @property
    def consistency(self) -> np.ndarray:
        """Mean token-to-token consistency over sequences with >= 2 real tokens, [L]."""
        return self.consistency_sum / self.consistency_count
