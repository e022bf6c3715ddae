"""The expert file: what scripts/find_experts.py writes (``experts.json``: selected experts, Delta tables and
the search settings) and scripts/steer_eval.py reads, or a plain JSON list of ``[moe_layer, expert]`` pairs.
Pairs are 0-indexed; windows are MoE layers, inclusive."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routing.experts import overlap, select_experts
from routing.window import Window

Pair = tuple[int, int]


def as_pairs(items: Sequence[Sequence[int]]) -> list[Pair]:
    """``[[layer, expert], ...]`` (e.g. read from JSON) as a list of int pairs."""
    pairs = []
    for item in items:
        if len(item) != 2 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in item):
            raise ValueError(f"expert entries must be [moe_layer, expert] integer pairs, got {item!r}")
        pairs.append((int(item[0]), int(item[1])))
    return pairs


@dataclasses.dataclass(frozen=True)
class ExpertSettings:
    """What an expert search measures and how it selects (exactly one of ``tau`` and ``top_n``); checked
    against a model by ``routing.pipelines.find_experts.check_settings``."""

    task: str
    window: Window
    tau: float | None = None
    top_n: int | None = None
    languages: tuple[str, ...] = ()
    chat: bool = False
    chat_template: str | None = None
    num_samples: int = 500
    seed: int = 0
    max_passages: int | None = None
    batch_size: int = 8
    max_length: int = 2048
    truncation: str = "keep_start"

    def select(self, delta: np.ndarray) -> list[Pair]:
        """The experts this rule selects from Delta [moe_layers, experts] inside the window."""
        return select_experts(delta, tau=self.tau, top_n=self.top_n, layers=self.window)


@dataclasses.dataclass
class ExpertSets:
    """Selected experts and the Delta tables [moe_layers, experts] they came from."""

    settings: ExpertSettings
    model: str
    num_moe_layers: int
    num_experts: int
    task_experts: list[Pair]
    delta_task: np.ndarray
    language_experts: dict[str, list[Pair]]
    delta_languages: dict[str, np.ndarray]
    sequences: dict[str, int]  # corpus -> number of sequences measured

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "settings": dataclasses.asdict(self.settings),
            "indexing": "pairs are [moe_layer, expert], 0-indexed; window inclusive",
            "num_moe_layers": self.num_moe_layers, "num_experts": self.num_experts,
            "task_experts": [list(p) for p in self.task_experts],
            "language_experts": {lang: [list(p) for p in pairs] for lang, pairs in self.language_experts.items()},
            "overlap_with_task": {lang: overlap(self.task_experts, pairs)._asdict()
                                  for lang, pairs in self.language_experts.items()},
            "sequences": self.sequences,
            "delta_task": self.delta_task.tolist(),
            "delta_languages": {lang: d.tolist() for lang, d in self.delta_languages.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExpertSets:
        """The sets of `to_json`'s output; ValueError naming a missing or malformed key."""
        missing = [key for key in ("settings", "model", "num_moe_layers", "num_experts", "task_experts", "delta_task",
                                   "language_experts", "delta_languages", "sequences") if key not in data]
        fields = dataclasses.fields(ExpertSettings)
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        settings = data.get("settings")
        if not isinstance(settings, dict):
            missing = missing or ["settings (an object)"]
        else:
            missing += [f"settings.{key}" for key in sorted(required - set(settings))]
        if missing:
            raise ValueError(f"not an experts.json of find_experts: missing key(s) {', '.join(missing)}")
        unknown = sorted(set(settings) - {f.name for f in fields})
        if unknown:
            raise ValueError(f"unknown key(s) settings.{', settings.'.join(unknown)}")
        settings = dict(settings)
        settings["window"] = Window(*settings["window"])
        settings["languages"] = tuple(settings["languages"])
        return cls(ExpertSettings(**settings), data["model"], int(data["num_moe_layers"]), int(data["num_experts"]),
                   as_pairs(data["task_experts"]), np.asarray(data["delta_task"], float),
                   {lang: as_pairs(p) for lang, p in data["language_experts"].items()},
                   {lang: np.asarray(d, float) for lang, d in data["delta_languages"].items()},
                   dict(data["sequences"]))


def read_experts(path: str | Path) -> ExpertSets | list[Pair]:
    """An expert file: the ``experts.json`` of scripts/find_experts.py, or a JSON list of [moe_layer, expert];
    ValueError naming the file and what is wrong with it."""
    expected = "expected find_experts output (experts.json) or a JSON list of [moe_layer, expert] pairs"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (IsADirectoryError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON file ({err}); {expected}") from err
    try:
        if isinstance(data, list):
            return as_pairs(data)
        if isinstance(data, dict) and "task_experts" in data:
            return ExpertSets.from_json(data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from err
    raise ValueError(f"{path}: {expected}")
