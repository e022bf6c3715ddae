"""The paper's correlation study: middle-layer routing divergence from English vs per-language accuracy.

A language's middle-layer divergence is the mean of its divergence curve (entropy-normalised JSD from the
reference, per MoE layer) over the window's layers (0-indexed, inclusive). Curves come from a
``scripts/analyze_routing.py`` table (``routing_table.json`` or ``routing_table.csv``) or are computed
here on FLORES passages. The reference language itself has no curve and is left out of the correlation.
"""
from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routing.analysis import analyze_corpus, divergence_curves, statistics_fn
from routing.data import ChatVariables, length_buckets, tokenize_records
from routing.model_io import LoadedModel
from routing.pipeline import load_passages
from routing.scoring import bootstrap_correlation_ci, pearson, spearman

REFERENCE = "eng_Latn"


@functools.lru_cache(maxsize=8)
def routing_statistics(model) -> Callable:
    """One compiled routing-statistics function per model, reused across corpora and calls (two consistency
    pairs per sequence: expert search and divergence use only counts and distributions)."""
    return statistics_fn(model, num_pairs=2)


def read_divergence_table(path: str | Path) -> dict[str, np.ndarray]:
    """Per-language divergence curves [moe_layers] from an analyze_routing table (JSON or CSV)."""
    path = Path(path)
    if path.suffix == ".json":
        table = json.loads(path.read_text())["per_language"]
        return {lang: np.asarray(row["divergence"], float) for lang, row in table.items()
                if row.get("divergence") is not None}
    curves: dict[str, dict[int, float]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["divergence"]:
                curves.setdefault(row["language"], {})[int(row["moe_layer"])] = float(row["divergence"])
    return {lang: np.array([values[i] for i in sorted(values)]) for lang, values in curves.items()}


def middle_divergence(curves: Mapping[str, Sequence[float]], window: tuple[int, int]) -> dict[str, float]:
    """Mean divergence over the window's MoE layers, per language."""
    first, last = window
    out = {}
    for lang, curve in curves.items():
        curve = np.asarray(curve, float)
        if not 0 <= first <= last < curve.size:
            raise ValueError(f"window {first}:{last} lies outside the {curve.size}-layer curve of {lang}")
        out[lang] = float(curve[first:last + 1].mean())
    return out


def compute_divergence(loaded: LoadedModel, languages: Sequence[str], *, source_dir: str | Path | None,
                       data_dir: str | Path | None = None, chat: bool = False, chat_template: str | None = None,
                       chat_variables: ChatVariables = ChatVariables(), max_passages: int | None = None,
                       batch_size: int = 8, max_length: int = 2048, truncation: str = "keep_start", seed: int = 0,
                       progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Divergence curves from English of ``languages`` on FLORES passages (as analyze_routing measures them)."""
    codes = (REFERENCE, *(lang for lang in dict.fromkeys(languages) if lang != REFERENCE))
    passages = load_passages(None if source_dir is None else Path(source_dir), codes, data_dir, max_passages)
    buckets = length_buckets(max_length, min(32, max_length))
    stats_fn = routing_statistics(loaded.model)
    corpora = {}
    for lang, records in passages.items():
        batches = tokenize_records(loaded.tokenizer, records, chat=chat, chat_template=chat_template,
                                   chat_variables=chat_variables, batch_size=batch_size, buckets=buckets,
                                   key=("passage_id",), truncation=truncation)
        corpora[lang] = analyze_corpus(loaded.model, loaded.params, batches, seed=seed, progress=progress,
                                       stats_fn=stats_fn)
    return divergence_curves(corpora, REFERENCE)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def correlate(divergence: Mapping[str, float], accuracy: Mapping[str, float], *, n_boot: int = 10_000,
              seed: int = 0, conf: float = 0.95) -> dict[str, Any]:
    """Pearson and Spearman correlation over the languages present in both mappings: each with its two-sided
    p-value (t test, n - 2 degrees of freedom) and a percentile bootstrap interval over languages
    (``routing.scoring.bootstrap_correlation_ci``).

    Needs at least three languages; NaN (a constant input) is reported as None.
    """
    languages = [lang for lang in divergence if lang in accuracy]
    if len(languages) < 3:
        raise ValueError(f"a correlation needs >= 3 languages with both divergence and accuracy, got {languages}")
    x = [divergence[lang] for lang in languages]
    y = [accuracy[lang] for lang in languages]
    r, p = pearson(x, y)
    rho, p_rho = spearman(x, y)
    r_ci, r_dropped = bootstrap_correlation_ci(x, y, n_boot=n_boot, seed=seed, conf=conf)
    rho_ci, rho_dropped = bootstrap_correlation_ci(x, y, rank=True, n_boot=n_boot, seed=seed, conf=conf)
    return {"languages": languages, "n": len(languages), "pearson_r": _finite(r), "pearson_p": _finite(p),
            "pearson_ci": [_finite(r_ci.low), _finite(r_ci.high)],
            "spearman_rho": _finite(rho), "spearman_p": _finite(p_rho),
            "spearman_ci": [_finite(rho_ci.low), _finite(rho_ci.high)],
            "bootstrap": {"resamples": n_boot, "confidence": conf, "seed": seed, "unit": "language",
                          "dropped_constant": {"pearson": r_dropped, "spearman": rho_dropped}},
            "divergence": dict(zip(languages, x)), "accuracy": dict(zip(languages, y))}
