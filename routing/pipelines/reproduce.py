"""Recipes: one JSON file per row of the paper's results table, run end to end by scripts/reproduce.py.

A recipe names the model (hub id or folder), the task, the expert selection (``tau`` or ``top_n``), the
steering mode and strength (``lam``; hard offsets ``eps``, ``eps_std``), the window (MoE layers, 0-indexed,
inclusive), the evaluated languages, the controls, and the settings of the expert search and of the
evaluation (``EvalSettings``: prompt template, instruction, stop strings, answer format, chat date,
reasoning effort, ...). ``reproduce`` loads the model once
and writes, in ``out_dir``: ``experts/`` (find_experts outputs), ``steered/`` (steer_eval outputs with the
correlation), ``control-{name}/`` per control (the baseline is reused), and ``summary.json`` (pooled
accuracies next to the paper's numbers, and the number of experts found next to the paper's).
The language-experts control evaluates the non-English languages only (English has no language experts).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from moe import load_config
from moe.atomic import check_output_folder
from routing import steering
from routing.data.languages import REFERENCE, flores_language
from routing.eval.results import ALL
from routing.eval.tasks import EvalSettings, get_task
from routing.outputs.files import write_json
from routing.pipelines.experts_file import ExpertSettings
from routing.pipelines.find_experts import check_settings, run_expert_search
from routing.pipelines.models import DTYPES, check_chat_template, load_model, load_tokenizer_for
from routing.pipelines.steer_eval import CONTROLS, SteerEvalConfig, SteerSettings, execute, prepare
from routing.window import Window


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One reproducible row. ``expert_selection``: {"tau": x} or {"top_n": n}; ``expert_search`` and ``eval``:
    keyword arguments of ``ExpertSettings`` and ``EvalSettings``; ``paper``: the row's reported numbers."""

    name: str
    model: str
    task: str
    expert_selection: Mapping[str, float]
    mode: str
    window: str
    languages: tuple[str, ...]
    lam: float | None = None  # soft mode only (None: the default strength)
    eps: float = steering.DEFAULT_EPS
    eps_std: float = 0.0
    controls: tuple[str, ...] = CONTROLS
    chat: bool = True
    dtype: str = "bfloat16"
    expert_search: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    paper: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        get_task(self.task)
        if set(self.expert_selection) not in ({"tau"}, {"top_n"}):
            raise ValueError(f"{self.name}: expert_selection must be {{'tau': x}} or {{'top_n': n}}, "
                             f"got {dict(self.expert_selection)}")
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ValueError(f"{self.name}: unknown controls {unknown}; choose from {CONTROLS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        SteerSettings(window=Window(0, 0), mode=self.mode, lam=self.lam)  # validates mode and lam
        EvalSettings(chat=self.chat, **self.eval)  # validates the evaluation settings
        for code in self.languages:
            flores_language(code)


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    """A recipe from JSON, with top-level fields replaced by ``overrides`` (None values are ignored)."""
    data = json.loads(Path(path).read_text())
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown recipe fields {unknown}; known: {sorted(fields)}")
    data.update({key: value for key, value in overrides.items() if value is not None})
    for key in ("languages", "controls"):
        if key in data:
            data[key] = tuple(data[key])
    return Recipe(**data)


def _pooled(table: list[dict[str, Any]]) -> dict[str, float]:
    row = next(row for row in table if row["language"] == ALL)
    return {key: row[key] for key in ("n", "base_accuracy", "steer_accuracy", "difference", "difference_ci_low",
                                      "difference_ci_high", "mcnemar_p")}


def reproduce(recipe: Recipe, out_dir: str | Path, *, source_dir: str | Path | None = None,
              tfds_dir: str | Path | None = None, eval_overrides: Mapping[str, Any] | None = None,
              search_overrides: Mapping[str, Any] | None = None, recipe_overrides: Mapping[str, Any] | None = None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Find experts, then baseline, steered and every control; returns (and writes) the summary.
    ``eval_overrides`` and ``search_overrides`` replace settings of the recipe's ``eval`` and ``expert_search``;
    ``recipe_overrides`` names the top-level fields already replaced in ``recipe`` (see ``load_recipe``). All
    three are recorded in the summary under ``overrides``."""
    out = check_output_folder(out_dir, may_exist=True)
    folder, config = load_config(recipe.model)
    window = Window.parse(recipe.window).check(config.num_moe_layers)
    languages = tuple(dict.fromkeys(flores_language(code) for code in recipe.languages))
    search = ExpertSettings(task=recipe.task, window=window, chat=recipe.chat,
                            languages=tuple(lang for lang in languages if lang != REFERENCE)
                            if "language-experts" in recipe.controls else (),
                            **recipe.expert_selection, **{**recipe.expert_search, **(search_overrides or {})})
    check_settings(search, config)
    evaluation = EvalSettings(chat=recipe.chat, **{**recipe.eval, **(eval_overrides or {})})
    steered = SteerEvalConfig(model=str(folder), task=recipe.task, experts=out / "experts" / "experts.json",
                              out_dir=out / "steered", languages=languages, mode=recipe.mode, lam=recipe.lam,
                              eps=recipe.eps, eps_std=recipe.eps_std, window=recipe.window, eval=evaluation,
                              source_dir=source_dir, tfds_dir=tfds_dir, dtype=recipe.dtype,
                              max_passages=search.max_passages)

    tokenizer = load_tokenizer_for(folder, None, config)
    check_chat_template(tokenizer, search.chat, search.chat_template)
    check_chat_template(tokenizer, evaluation.chat, evaluation.chat_template)
    progress(f"[{recipe.name}] loading {recipe.model}")
    loaded = load_model(folder, tokenizer, recipe.dtype)
    progress(f"[{recipe.name}] finding {recipe.task} experts")
    sets, _ = run_expert_search(str(folder), search, out / "experts", source_dir=source_dir, tfds_dir=tfds_dir,
                                loaded=loaded)
    progress(f"[{recipe.name}] {len(sets.task_experts)} task experts; baseline and steered runs")
    main = execute(prepare(steered, loaded))
    summary: dict[str, Any] = {
        "recipe": dataclasses.asdict(recipe), "model_folder": str(folder), "window": list(window),
        "experts_found": len(sets.task_experts), "experts_paper": recipe.paper.get("experts"),
        "steered": _pooled(main["table"]), "paper": dict(recipe.paper), "controls": {},
        "correlation": main["correlation"],
        "overrides": {"recipe": dict(recipe_overrides or {}), "eval": dict(eval_overrides or {}),
                      "expert_search": dict(search_overrides or {})},
    }
    for control in recipe.controls:
        progress(f"[{recipe.name}] control {control}")
        langs = tuple(lang for lang in languages if lang != REFERENCE) if control == "language-experts" else languages
        config_c = dataclasses.replace(steered, control=control, languages=langs, correlation=False,
                                       out_dir=out / f"control-{control}")
        result = execute(prepare(config_c, loaded), baseline=main["baseline"])
        summary["controls"][control] = _pooled(result["table"])
    write_json(out / "summary.json", summary)
    return summary
