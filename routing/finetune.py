"""Routing-aware finetuning: pull a language's middle-layer routing toward the reference language's.

A finetuning batch holds parallel pairs: rows [0, n) are reference-language sequences (e.g. base/English),
rows [n, 2n) their translations, row n + i aligned with row i. For each pair and each chosen MoE layer l,
q is the sequence's expert distribution (``routing.stats.sequence_distributions``: mean over its real tokens
of softmax over all E raw router logits, as in the analysis). The alignment loss is

    A = mean over chosen layers l and pairs i of  div(stop_gradient(q_ref[l, i]), q_lang[l, i])

with div one of "jsd" (Jensen-Shannon, natural log), "kl" (KL(q_ref || q_lang)) or "normalized_jsd" (the
paper's entropy-normalised JSD). The reference side is a fixed target: no gradient flows through it.
The total loss adds `alignment_weight * A` to the model's usual losses (see `moe.train`); the weight is
read from the batch ("alignment_weight"), so runs with different weights share one compiled step.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from moe.model import MoeOutput, MoeTransformer
from moe.train import Batch, ExtraLoss, LossWeights, fit, init_state, make_train_step, masked_optimizer, router_only
from routing.divergence import entropy_normalized_jsd, jsd
from routing.stats import sequence_distributions

DIVERGENCES = ("jsd", "kl", "normalized_jsd")


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    layers: tuple[int, ...]  # MoE layers whose routing is aligned (e.g. the middle window)
    divergence: str = "jsd"
    router_only: bool = True  # train only `.../router/...` parameters
    steps: int = 100
    learning_rate: float = 1e-3
    lm_weight: float = 1.0  # weight of the next-token loss on both halves of the batch
    load_balance_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence {self.divergence!r} not in {DIVERGENCES}")
        if not self.layers:
            raise ValueError("give at least one MoE layer to align")


def kl_divergence(p: jax.Array, q: jax.Array) -> jax.Array:
    """KL(p || q) = sum p (log p - log q) over the last axis, 0 log 0 = 0.

    Exact for every q a float32 holds; only entries of q that underflowed to 0 (where p > 0) are read as
    the smallest normal float32 (1.2e-38), which keeps the loss finite.
    """
    tiny = jnp.finfo(jnp.float32).tiny
    positive = p > 0
    log_ratio = jnp.log(jnp.where(positive, p, 1.0)) - jnp.log(jnp.maximum(q, tiny))
    return jnp.sum(jnp.where(positive, p * log_ratio, 0.0), axis=-1)


def _divergence(p: jax.Array, q: jax.Array, kind: str) -> jax.Array:
    if kind == "jsd":
        return jsd(p, q)
    if kind == "normalized_jsd":
        return entropy_normalized_jsd(p, q)
    return kl_divergence(p, q)


def routing_alignment_loss(router_logits: jax.Array, attention_mask: jax.Array, layers: Sequence[int],
                           divergence: str = "jsd") -> jax.Array:
    """A (module docstring) for router logits [L, 2n, S, E] and mask [2n, S] laid out as [reference; language]."""
    n = attention_mask.shape[0] // 2
    if attention_mask.shape[0] != 2 * n:
        raise ValueError(f"need an even number of rows (reference half, language half), got {attention_mask.shape[0]}")
    q = sequence_distributions(router_logits[jnp.asarray(list(layers))], attention_mask)
    return jnp.mean(_divergence(jax.lax.stop_gradient(q[:, :n]), q[:, n:], divergence))


def alignment_extra_loss(layers: Sequence[int], divergence: str = "jsd") -> ExtraLoss:
    """`moe.train` extra loss: batch["alignment_weight"] * A on the model output of a pair batch."""
    layers = tuple(int(layer) for layer in layers)

    def extra(output: MoeOutput, batch: Batch) -> jax.Array:
        loss = routing_alignment_loss(output.router_logits, batch["attention_mask"], layers, divergence)
        return batch["alignment_weight"] * loss

    return extra


@functools.lru_cache(maxsize=8)
def _optimizer_and_step(model: MoeTransformer, settings: FinetuneSettings) -> tuple[optax.GradientTransformation, Any]:
    """One compiled step per (model, settings): runs that differ only in the batch's weight share it."""
    trainable = router_only if settings.router_only else None
    opt = masked_optimizer(optax.adam(settings.learning_rate), trainable)
    step = make_train_step(model, opt, LossWeights(settings.load_balance_weight, 0.0, settings.lm_weight),
                           alignment_extra_loss(settings.layers, settings.divergence), trainable)
    return opt, step


def finetune(model: MoeTransformer, params: Any, batch_at: Callable[[int], Batch], settings: FinetuneSettings,
             *, progress: bool = True, description: str = "finetune") -> tuple[Any, list[dict[str, float]]]:
    """Finetune `params` for `settings.steps` on pair batches from `batch_at(step)` (each with input_ids,
    attention_mask and a scalar alignment_weight). Returns the new parameters and per-step metrics
    ("extra" is the weighted alignment loss)."""
    opt, step = _optimizer_and_step(model, settings)
    state, history = fit(init_state(params, opt), step, batch_at, settings.steps, progress=progress,
                         description=description)
    return state.params, history
