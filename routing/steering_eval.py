"""Baseline vs steered evaluation on the same items (scripts/steer_eval.py), with controls and correlation.

The steered run edits routing with the experts of an expert file, inside the window, in every language:
mode "soft" (``z_k + lam * std(z)``), "hard" (forced on) or "off" (forced off). Controls replace the
steered experts, always with as many experts as the task set has:

- "outside-window": the experts with the largest task Delta in the layers outside the window, steered there;
- "language-experts": per evaluated language X, the experts with the largest Delta of X's FLORES text vs
  English in the window (the expert file must have language experts for X);
- "random": in each layer of the task set, as many experts drawn at random (seeded) from the others.

The baseline runs with the empty edit, which leaves outputs bit-identical and shares the compiled
functions with the steered run. Everything is checked (task, window, experts against the model's
shape, empty sets, languages) before any weights are loaded or data is read.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routing import steering
from routing.expert_search import ExpertSets, as_pairs, check_window
from routing.experts import random_experts, select_experts
from routing.evaluation import ItemResult
from routing.model_io import LoadedModel
from routing.tasks import EvalSettings, TaskData, flores_language, run_task

MODES = ("soft", "hard", "off")
DEFAULT_LAM = 0.5
CONTROLS = ("outside-window", "language-experts", "random")
Pair = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class SteerSettings:
    """How to steer: ``window`` (first, last MoE layer, 0-indexed, inclusive), ``mode``, ``lam`` (soft only;
    None: ``DEFAULT_LAM``), the hard/off offset ``eps + eps_std * n`` (n ~ N(0, 1) per token and expert, see ``routing.steering``;
    the paper's eps ~ N(0, 1e-6) is eps 0, eps_std 1e-6), an optional ``control``, and ``seed`` (random
    control and the key of the offset draws)."""

    window: tuple[int, int]
    mode: str = "soft"
    lam: float | None = None
    eps: float = steering.DEFAULT_EPS
    eps_std: float = 0.0
    control: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.control is not None and self.control not in CONTROLS:
            raise ValueError(f"unknown control {self.control!r}; choose one of {CONTROLS}")
        if self.mode != "soft":
            if self.lam is not None:
                raise ValueError(f"lam is the strength of soft steering; mode {self.mode!r} takes none (drop lam)")
            return
        lam = DEFAULT_LAM if self.lam is None else float(self.lam)
        steering.finite_float32(lam, "lam")
        if lam == 0:
            raise ValueError("lam must be non-zero for soft steering (0 leaves routing unchanged)")
        object.__setattr__(self, "lam", lam)


@dataclasses.dataclass(frozen=True)
class SteeringPlan:
    """The experts steered for one language, the layers the edit covers, and the edit."""

    pairs: list[Pair]
    layers: list[int]
    edit: steering.RoutingEdit

    def to_json(self) -> dict[str, Any]:
        return {"experts": [list(p) for p in self.pairs], "num_experts": len(self.pairs), "layers": self.layers}


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


def _top(delta: np.ndarray, n: int, layers: Sequence[int], what: str) -> list[Pair]:
    if not layers:
        raise ValueError(f"{what}: no layers to choose experts from")
    return select_experts(delta, top_n=min(n, len(layers) * delta.shape[1]), layers=layers)


def _pairs_for(experts: ExpertSets | list[Pair], settings: SteerSettings, language: str, num_moe_layers: int,
               num_experts: int) -> tuple[list[Pair], list[int]]:
    """The (layer, expert) pairs steered for ``language`` and the layers the edit covers."""
    task = experts.task_experts if isinstance(experts, ExpertSets) else experts
    if not task:
        raise ValueError("the expert set is empty: nothing to steer (lower tau, or use top_n)")
    first, last = settings.window
    inside = list(range(first, last + 1))
    if settings.control in ("outside-window", "language-experts") and not isinstance(experts, ExpertSets):
        raise ValueError(f"control {settings.control!r} needs Delta tables: pass the experts.json of find_experts")
    if settings.control == "outside-window":
        outside = [layer for layer in range(num_moe_layers) if not first <= layer <= last]
        return _top(experts.delta_task, len(task), outside, "outside-window control"), outside
    if settings.control == "language-experts":
        if language not in experts.delta_languages:
            raise ValueError(f"no language experts for {language} in the expert file (it has "
                             f"{sorted(experts.delta_languages) or 'none'}); rerun find_experts with it, or drop "
                             "it from the languages")
        return _top(experts.delta_languages[language], len(task), inside, "language-experts control"), inside
    if settings.control == "random":
        return random_experts(task, num_experts, settings.seed), inside
    return list(task), inside


def plan_steering(experts: ExpertSets | list[Pair], settings: SteerSettings, languages: Sequence[str],
                  num_moe_layers: int, num_experts: int) -> dict[str, SteeringPlan]:
    """The steering plan of every language; ValueError for anything that does not fit the model."""
    check_window(settings.window, num_moe_layers)
    if isinstance(experts, ExpertSets) and (experts.num_moe_layers, experts.num_experts) != (num_moe_layers,
                                                                                            num_experts):
        raise ValueError(f"the expert file was made for {experts.num_moe_layers} MoE layers x "
                         f"{experts.num_experts} experts; this model has {num_moe_layers} x {num_experts}")
    plans = {}
    for language in (flores_language(code) for code in languages):
        pairs, layers = _pairs_for(experts, settings, language, num_moe_layers, num_experts)
        mask = steering.selection_mask(num_moe_layers, num_experts, pairs, layers)  # raises on bad ids
        kept = [(int(a), int(b)) for a, b in np.argwhere(mask)]
        if settings.mode == "soft":
            edit = steering.soft(num_moe_layers, num_experts, kept, settings.lam, eps=settings.eps)
        elif settings.mode == "hard":
            edit = steering.force_on(num_moe_layers, num_experts, kept, eps=settings.eps, eps_std=settings.eps_std,
                                     key=settings.seed)
        else:
            edit = steering.force_off(num_moe_layers, num_experts, kept, eps=settings.eps, eps_std=settings.eps_std,
                                      key=settings.seed)
        plans[language] = SteeringPlan(kept, layers, edit)
    return plans


def run_steered(loaded: LoadedModel, data: TaskData, eval_settings: EvalSettings, plans: dict[str, SteeringPlan],
                progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """Every record of ``data`` under its language's edit; languages with the same edit run together."""
    groups: dict[tuple, list[str]] = {}
    for language in data.languages:
        plan = plans[language]
        groups.setdefault((tuple(plan.pairs), tuple(plan.layers)), []).append(language)
    results: dict[tuple[str, int], ItemResult] = {}
    for languages in groups.values():
        subset = dataclasses.replace(data, languages=tuple(languages),
                                     records=[r for r in data.records if r["language"] in languages])
        for item in run_task(loaded.model, loaded.params, loaded.tokenizer, subset, eval_settings,
                             edit=plans[languages[0]].edit, eos_ids=loaded.eos_ids, progress=progress):
            results[item.key] = item
    return [results[(r["language"], int(r["id"]))] for r in data.records]


def run_baseline(loaded: LoadedModel, data: TaskData, eval_settings: EvalSettings,
                 progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """Every record of ``data`` with the empty (neutral) edit."""
    empty = steering.empty(loaded.config.num_moe_layers, loaded.config.num_experts)
    return run_task(loaded.model, loaded.params, loaded.tokenizer, data, eval_settings, edit=empty,
                    eos_ids=loaded.eos_ids, progress=progress)

