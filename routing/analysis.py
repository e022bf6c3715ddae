"""Routing analysis over a corpus: in-graph statistics per batch, divergence curves, middle-layer window.

Only O(batch x layers x experts) summaries leave the device per batch (DESIGN principle 4); per-passage
distributions are kept on the host ([layers, passages, experts]) because divergence pairs passages
across languages.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from moe.inputs import check_inputs
from routing.divergence import divergence_from_reference, entropy_normalized_jsd, jsd
from routing.scoring import bootstrap_mean_interval
from routing.stats import CorpusRouting, sequence_statistics
from routing.window import Window


def statistics_fn(model, top_k: int | None = None, num_pairs: int = 64) -> Callable:
    """A jitted fn(params, input_ids, attention_mask, key, edit=None) -> SequenceStats, using analysis mode."""
    k = model.config.top_k if top_k is None else top_k

    @partial(jax.jit)
    def fn(params, input_ids, attention_mask, key, edit=None):
        out = model.apply({"params": params}, input_ids, attention_mask, edit=edit, analysis_only=True)
        return sequence_statistics(out.router_logits, attention_mask, k, num_pairs=num_pairs, key=key)

    return fn


def analyze_corpus(model, params, batches: Iterable, *, seed: int = 0, num_pairs: int = 64, edit=None,
                   progress: Callable[[int], None] | None = None, stats_fn: Callable | None = None
                   ) -> CorpusRouting:
    """Routing summaries of every real row of `batches` (objects with input_ids, attention_mask, keys).

    Filler rows (key None) are dropped. Each batch is checked (`moe.inputs.check_inputs`) before its jitted
    call. Each batch uses its own PRNG key for consistency pairs, derived from `seed` and the batch index.
    Pass `stats_fn` (from `statistics_fn`, with the same `num_pairs`) to reuse one compiled function across
    corpora; otherwise a new one is made (and compiled) per call.
    """
    fn = statistics_fn(model, num_pairs=num_pairs) if stats_fn is None else stats_fn
    parts, keys = [], []
    for i, batch in enumerate(batches):
        check_inputs(model.config.vocab_size, batch.input_ids, batch.attention_mask)
        stats = fn(params, jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask),
                   jax.random.fold_in(jax.random.PRNGKey(seed), i), edit)
        rows = [j for j, key in enumerate(batch.keys) if key is not None]
        stats = jax.device_get(stats)
        parts.append((stats, rows))
        keys.extend(batch.keys[j] for j in rows)
        if progress:
            progress(len(rows))
    if not parts:
        raise ValueError("no sequences to analyse (empty selection)")

    def cat(field: str, axis: int) -> np.ndarray:
        return np.concatenate([np.take(getattr(s, field), rows, axis=axis) for s, rows in parts], axis=axis)

    return CorpusRouting(keys, cat("q", 1), cat("counts", 1), cat("lengths", 0), cat("entropy", 1),
                         cat("consistency", 1))


def _aligned_pairs(corpora: dict[str, CorpusRouting], reference: str
                   ) -> Iterable[tuple[str, CorpusRouting, CorpusRouting]]:
    """(language, reference rows, language rows) over the sequences both have, for every other language."""
    if reference not in corpora:
        raise KeyError(f"reference language {reference!r} was not analysed (have: {sorted(corpora)})")
    ref = corpora[reference]
    for lang, corpus in corpora.items():
        if lang == reference:
            continue
        shared = [k for k in ref.keys if k in set(corpus.keys)]
        if not shared:
            raise ValueError(f"{lang} shares no alignment keys with {reference}")
        yield lang, ref.aligned(shared), corpus.aligned(shared)


def divergence_curves(corpora: dict[str, CorpusRouting], reference: str, normalized: bool = True
                      ) -> dict[str, np.ndarray]:
    """Per-layer divergence [L] of every language from `reference`, averaged over aligned sequences."""
    return {lang: np.asarray(divergence_from_reference(a.q, b.q, normalized=normalized))
            for lang, a, b in _aligned_pairs(corpora, reference)}


def sequence_divergences(corpora: dict[str, CorpusRouting], reference: str, normalized: bool = True
                         ) -> dict[str, np.ndarray]:
    """Per language, [L, n]: each aligned sequence's divergence from `reference` per layer (the terms whose
    mean over sequences `divergence_curves` gives)."""
    divergence = entropy_normalized_jsd if normalized else jsd
    return {lang: np.asarray(divergence(a.q, b.q)) for lang, a, b in _aligned_pairs(corpora, reference)}


def divergence_intervals(corpora: dict[str, CorpusRouting], reference: str, normalized: bool = True, *,
                         n_boot: int = 1000, conf: float = 0.95, seed: int = 0) -> dict[str, np.ndarray]:
    """Per language, [2, L]: the percentile bootstrap interval (low, high) of `divergence_curves`' mean,
    resampling aligned sequences (the same draws for every layer)."""
    return {lang: np.stack(bootstrap_mean_interval(d, n_boot, seed, conf))
            for lang, d in sequence_divergences(corpora, reference, normalized).items()}


def select_middle_window(curves: dict[str, np.ndarray], fraction: float = 0.25, margin: int = 0) -> Window:
    """The valley of the mean divergence curve, as a window of MoE layers.

    Rule: average the curves over languages; layers whose value is within `fraction` of the curve's range
    above its minimum qualify; the window is the contiguous run of qualifying layers around the minimum,
    shrunk by `margin` layers on each side when it is long enough. Override by passing a window directly
    wherever one is used.
    """
    if not curves:
        raise ValueError("no divergence curves to select a window from")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    mean = np.mean(np.stack(list(curves.values())), axis=0)
    low, high = float(mean.min()), float(mean.max())
    ok = mean <= low + fraction * (high - low)
    center = int(np.argmin(mean))
    first = last = center
    while first > 0 and ok[first - 1]:
        first -= 1
    while last < len(mean) - 1 and ok[last + 1]:
        last += 1
    if last - first >= 2 * margin:
        first, last = first + margin, last - margin
    return Window(first, last)
