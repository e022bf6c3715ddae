"""FLORES passages to routing summaries, language by language: the measurement analyze_routing, correlate,
find_experts and steer_eval share (passages from ``routing.data.flores.load_passages``)."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from routing.analysis import analyze_corpus, statistics_fn
from routing.data.chat import ChatVariables
from routing.data.tokenize import TokenBatch, length_buckets, tokenize_records
from routing.outputs.store import LanguageStore
from routing.stats import CorpusRouting


@functools.lru_cache(maxsize=8)
def routing_statistics(model) -> Callable:
    """One compiled routing-statistics function per model, reused across corpora and calls (two consistency
    pairs per sequence: expert search and divergence use only counts and distributions)."""
    return statistics_fn(model, num_pairs=2)


def passage_batches(tokenizer, passages: Mapping[str, Sequence[Mapping[str, Any]]], *, chat: bool,
                    chat_template: str | None = None, chat_variables: ChatVariables = ChatVariables(),
                    batch_size: int, max_length: int, truncation: str) -> dict[str, list[TokenBatch]]:
    """Each language's passages as token batches keyed by passage id, in length buckets from 32 tokens (or
    ``max_length``, if shorter) up to ``max_length``; ValueError naming the language of a passage too long."""
    buckets = length_buckets(max_length, min(32, max_length))
    batches = {}
    for code, records in passages.items():
        try:
            batches[code] = tokenize_records(tokenizer, records, chat=chat, chat_template=chat_template,
                                             chat_variables=chat_variables, batch_size=batch_size,
                                             buckets=buckets, key=("passage_id",), truncation=truncation)
        except ValueError as err:
            raise ValueError(f"{code}: {err} (see --max-length and --truncate)") from err
    return batches


def route_languages(model, params, batches: Mapping[str, Sequence[TokenBatch]], *, seed: int, stats_fn: Callable,
                    progress: Callable[[int], None] | None = None, store: LanguageStore | None = None,
                    settings: Mapping[str, Mapping[str, Any]] | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, CorpusRouting]:
    """Each language's routing summaries (``routing.analysis.analyze_corpus``), in the order of ``batches``.

    With a ``store``, a language stored under ``settings[code]`` is loaded instead of computed, and each
    computed language is saved as soon as it completes, so an interrupted run resumes; ``log`` gets a line
    per language saying which. ``progress`` gets the number of passages done.
    """
    corpora = {}
    for code, rows in batches.items():
        count = sum(key is not None for batch in rows for key in batch.keys)
        if store is not None and store.check(code, settings[code]):
            corpora[code] = store.load(code)
            if progress:
                progress(count)
            if log:
                log(f"{code}: reused {store.path(code)}")
            continue
        corpora[code] = analyze_corpus(model, params, rows, seed=seed, progress=progress, stats_fn=stats_fn)
        if store is not None:
            store.save(code, corpora[code], settings[code])
            if log:
                log(f"{code}: computed {count} passages -> {store.path(code)}")
    return corpora
