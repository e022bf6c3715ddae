"""The routing table (per layer and language) and the middle-layer window record, as JSON and CSV, and the
divergence curves read back from such a table.

Layer indexing, used everywhere in the outputs: ``moe_layer`` i is the i-th MoE layer, 0-indexed (the
index into ``router_logits``); ``decoder_layer`` is its 0-indexed position among all decoder layers
(``model.config.moe_layers[i]``). Windows are inclusive at both ends.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routing.analysis import divergence_curves
from routing.outputs.files import write_csv
from routing.stats import CorpusRouting
from routing.window import Window


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


def window_record(window: Window, moe_layers: Sequence[int], *, selected: bool,
                  rule: Mapping[str, Any] | None = None, mean_curve: np.ndarray | None = None) -> dict[str, Any]:
    """The middle-layer window in MoE-layer and decoder-layer indices (0-indexed, inclusive)."""
    return {
        "moe_layers": list(window),
        "decoder_layers": [moe_layers[window.first], moe_layers[window.last]],
        "decoder_layers_in_window": [moe_layers[layer] for layer in window.layers],
        "indexing": "0-indexed, inclusive; moe_layers index MoE layers, decoder_layers index all decoder layers",
        "source": "selected" if selected else "override",
        "rule": dict(rule) if selected and rule else None,
        "mean_divergence": _floats(mean_curve) if mean_curve is not None else None,
    }


def write_table_csv(path: str | Path, table: Mapping[str, Mapping[str, Any]], moe_layers: Sequence[int]) -> None:
    """One row per (language, MoE layer), atomically; empty cells for None."""
    rows = []
    for language, row in table.items():
        for layer, decoder_layer in enumerate(moe_layers):
            values = {name: "" if row[name] is None or row[name][layer] is None else repr(row[name][layer])
                      for name in ("divergence", "jsd", "entropy", "consistency")}
            rows.append({"language": language, "moe_layer": layer, "decoder_layer": decoder_layer, **values,
                         "passages": row["passages"], "tokens": row["tokens"]})
    write_csv(path, rows)


def read_divergence_table(path: str | Path) -> dict[str, np.ndarray]:
    """Per-language divergence curves [moe_layers] from a routing table (``routing_table.json`` or
    ``routing_table.csv`` of scripts/analyze_routing.py); the reference, which has none, is left out."""
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
