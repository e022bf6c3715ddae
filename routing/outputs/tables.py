"""The routing table (per layer and language) and the middle-layer window record, as JSON and CSV.

Layer indexing, used everywhere in the outputs: ``moe_layer`` i is the i-th MoE layer, 0-indexed (the
index into ``router_logits``); ``decoder_layer`` is its 0-indexed position among all decoder layers
(``model.config.moe_layers[i]``). Windows are inclusive at both ends.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routing.analysis import CorpusRouting, divergence_curves
from routing.store import atomic_path

CSV_COLUMNS = ("language", "moe_layer", "decoder_layer", "divergence", "jsd", "entropy", "consistency",
               "passages", "tokens")


def _floats(values: np.ndarray) -> list:
    """A nested list of floats with NaN as None (JSON has no NaN)."""
    if np.ndim(values) == 0:
        value = float(values)
        return None if math.isnan(value) else value
    return [_floats(v) for v in values]


def routing_table(corpora: Mapping[str, CorpusRouting], reference: str) -> dict[str, dict[str, Any]]:
    """Per language: per-layer divergence from `reference` (entropy-normalised JSD), raw JSD, routing entropy,
    token-to-token consistency, activation rates [L, E], and the numbers of passages and tokens.

    Divergence and JSD are None for the reference itself.
    """
    normalized = divergence_curves(corpora, reference, normalized=True)
    raw = divergence_curves(corpora, reference, normalized=False)
    table = {}
    for language, corpus in corpora.items():
        summary = corpus.summary()
        table[language] = {
            "passages": len(corpus.keys),
            "tokens": int(corpus.lengths.sum()),
            "divergence": _floats(normalized[language]) if language in normalized else None,
            "jsd": _floats(raw[language]) if language in raw else None,
            "entropy": _floats(summary["entropy"]),
            "consistency": _floats(summary["consistency"]),
            "activation_rate": _floats(corpus.activation_rate),
        }
    return table


def window_record(window: tuple[int, int], moe_layers: Sequence[int], *, selected: bool,
                  rule: Mapping[str, Any] | None = None, mean_curve: np.ndarray | None = None) -> dict[str, Any]:
    """The middle-layer window in MoE-layer and decoder-layer indices (0-indexed, inclusive)."""
    first, last = window
    return {
        "moe_layers": [first, last],
        "decoder_layers": [moe_layers[first], moe_layers[last]],
        "decoder_layers_in_window": list(moe_layers[first:last + 1]),
        "indexing": "0-indexed, inclusive; moe_layers index MoE layers, decoder_layers index all decoder layers",
        "source": "selected" if selected else "override",
        "rule": dict(rule) if selected and rule else None,
        "mean_divergence": _floats(mean_curve) if mean_curve is not None else None,
    }


def parse_window(text: str, num_moe_layers: int) -> tuple[int, int]:
    """``"A:B"`` -> (A, B), MoE-layer indices, 0-indexed, inclusive; ValueError if malformed or out of range."""
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"window must be FIRST:LAST (MoE-layer indices), got {text!r}") from None
    if not 0 <= first <= last < num_moe_layers:
        raise ValueError(f"window {text!r} must satisfy 0 <= FIRST <= LAST < {num_moe_layers} (MoE layers)")
    return first, last


def write_table_csv(path: str | Path, table: Mapping[str, Mapping[str, Any]], moe_layers: Sequence[int]) -> None:
    """One row per (language, MoE layer), atomically; empty cells for None."""
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for language, row in table.items():
            for layer, decoder_layer in enumerate(moe_layers):
                values = [None if row[name] is None else row[name][layer]
                          for name in ("divergence", "jsd", "entropy", "consistency")]
                writer.writerow([language, layer, decoder_layer,
                                 *("" if v is None else repr(v) for v in values),
                                 row["passages"], row["tokens"]])
