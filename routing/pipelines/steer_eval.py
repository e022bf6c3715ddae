"""Baseline vs steered evaluation on the same items (scripts/steer_eval.py): check every input, plan the
steering, run baseline and steered, write the results.

The steered run edits routing with the experts of an expert file (``routing.pipelines.experts_file``),
inside the window, in every language: mode "soft" (``z_k + lam * std(z)``), "hard" (forced on) or "off"
(forced off). Controls replace the steered experts, always with as many experts as the task set has:

- "outside-window": the experts with the largest task Delta in the layers outside the window, steered there;
- "language-experts": per evaluated language X, the experts with the largest Delta of X's FLORES text vs
  English in the window (the expert file must have language experts for X);
- "random": in each layer of the task set, as many experts drawn at random (seeded) from the others.

The baseline runs with the empty edit, which leaves outputs bit-identical and shares the compiled
functions with the steered run. Everything is checked (task, window, experts against the model's
shape, empty sets, languages) before any weights are loaded or data is read.

``execute`` writes, in ``out_dir``:

- ``config.json``: the exact configuration (model, task, languages, evaluation and steering settings, the
  window, the experts steered per language, items per language, EOS ids);
- ``results.json`` and ``results.csv``: per language and pooled ("all"): baseline and steered accuracy with
  Wilson intervals, the difference with its paired bootstrap interval, the McNemar p-value;
- ``items.jsonl``: every item's baseline and steered outcome (prediction, gold, output or option scores);
- ``steer_eval.png``: accuracies and differences per language;
- ``correlation.json`` and ``correlation.png``: middle-layer divergence vs baseline accuracy across the
  evaluated languages other than English (Pearson and Spearman with p-values and bootstrap intervals;
  when there are at least three and it is not turned off).

The task decides the data (``routing.data.suites``): for the organism's task, languages are its codes, the
reference is its base, divergence is measured on its passages, and ``source_dir`` is the organism folder.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from moe import load_config
from moe.atomic import atomic_path, check_output_folder
from routing import steering
from routing.analysis import divergence_curves
from routing.data.suites import get_suite
from routing.eval.results import ALL, ItemResult, accuracy_table, paired_table
from routing.eval.tasks import EvalSettings, TaskData, get_task, load_task, run_task, task_settings
from routing.experts import random_experts, select_experts
from routing.outputs.figures import NORMALISED_JSD, plot_correlation, plot_steering
from routing.outputs.files import write_csv, write_json
from routing.outputs.tables import read_divergence_table
from routing.pipelines.experts_file import ExpertSets, Pair, read_experts
from routing.pipelines.models import LoadedModel, check_chat_template, load_model, load_tokenizer_for
from routing.pipelines.passages import passage_batches, route_languages, routing_statistics
from routing.scoring import correlate
from routing.window import Window

MODES = ("soft", "hard", "off")
DEFAULT_LAM = 0.5
CONTROLS = ("outside-window", "language-experts", "random")


@dataclasses.dataclass(frozen=True)
class SteerSettings:
    """How to steer: ``window`` (MoE layers), ``mode``, ``lam`` (soft only; None: ``DEFAULT_LAM``), the hard/off
    offset ``eps + eps_std * n`` (n ~ N(0, 1) per token and expert, see ``routing.steering``; the paper's
    eps ~ N(0, 1e-6) is eps 0, eps_std 1e-6), an optional ``control``, and ``seed`` (random control and the
    key of the offset draws)."""

    window: Window
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
    inside = list(settings.window.layers)
    if settings.control in ("outside-window", "language-experts") and not isinstance(experts, ExpertSets):
        raise ValueError(f"control {settings.control!r} needs Delta tables: pass the experts.json of find_experts")
    if settings.control == "outside-window":
        outside = [layer for layer in range(num_moe_layers) if layer not in inside]
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
    """The steering plan of every language (codes as the task's data writes them); ValueError for anything that
    does not fit the model."""
    settings.window.check(num_moe_layers)
    if isinstance(experts, ExpertSets) and (experts.num_moe_layers, experts.num_experts) != (num_moe_layers,
                                                                                            num_experts):
        raise ValueError(f"the expert file was made for {experts.num_moe_layers} MoE layers x "
                         f"{experts.num_experts} experts; this model has {num_moe_layers} x {num_experts}")
    plans = {}
    for language in languages:
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
    return run_task(loaded.model, loaded.params, loaded.tokenizer, data, eval_settings, edit=steering.empty(loaded),
                    eos_ids=loaded.eos_ids, progress=progress)


@dataclasses.dataclass(frozen=True)
class SteerEvalConfig:
    """One steer_eval run. ``window`` "A:B" (MoE layers, 0-indexed, inclusive) or None: the expert file's.

    ``source_dir``: data laid out like shared/data (the organism folder for the organism's task, None: the
    model's folder); ``tfds_dir``: TFDS prepared files. ``divergence``: an analyze_routing table (JSON or CSV) for
    the correlation, else it is computed on the task data's passages (FLORES; ``max_passages`` per language)
    unless ``correlation`` is False.
    """

    model: str
    task: str
    experts: Path
    out_dir: Path
    languages: tuple[str, ...]
    mode: str = "soft"
    lam: float | None = None  # soft only (None: DEFAULT_LAM)
    window: str | None = None
    control: str | None = None
    eps: float = steering.DEFAULT_EPS
    eps_std: float = 0.0
    seed: int = 0
    eval: EvalSettings = EvalSettings()
    source_dir: Path | None = None
    tfds_dir: Path | None = None
    tokenizer: str | None = None
    dtype: str = "float32"
    n_boot: int = 10_000
    correlation: bool = True
    divergence: Path | None = None
    max_passages: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        suite = get_suite(get_task(self.task).data)
        object.__setattr__(self, "source_dir", suite.data_dir(self.source_dir, self.model))


@dataclasses.dataclass
class PreparedSteerEval:
    config: SteerEvalConfig
    reference: str  # the language divergence is measured from
    steer: SteerSettings
    plans: dict[str, SteeringPlan]
    data: TaskData
    loaded: LoadedModel
    divergence_curves: dict[str, Any] | None


def _window(config: SteerEvalConfig, experts: ExpertSets | list, num_moe_layers: int) -> Window:
    if config.window is not None:
        return Window.parse(config.window).check(num_moe_layers)
    if isinstance(experts, ExpertSets):
        return experts.settings.window.check(num_moe_layers)
    raise ValueError("no window: pass one (FIRST:LAST MoE layers), or an expert file from find_experts")


def prepare(config: SteerEvalConfig, loaded: LoadedModel | None = None) -> PreparedSteerEval:
    """Check everything that can be checked without weights, read the data, then load the model (or reuse
    ``loaded``, which must be the same model folder)."""
    get_task(config.task)
    check_output_folder(config.out_dir, may_exist=True)
    if config.n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {config.n_boot}")
    if not config.languages:
        raise ValueError("no languages given")
    suite = get_suite(get_task(config.task).data)
    languages, reference = suite.codes(config.languages, config.source_dir), suite.reference(config.source_dir)
    folder, model_config = load_config(config.model) if loaded is None else (loaded.folder, loaded.config)
    experts = read_experts(config.experts)
    window = _window(config, experts, model_config.num_moe_layers)
    steer = SteerSettings(window=window, mode=config.mode, lam=config.lam, eps=config.eps, eps_std=config.eps_std,
                          control=config.control, seed=config.seed)
    plans = plan_steering(experts, steer, languages, model_config.num_moe_layers, model_config.num_experts)
    others = [lang for lang in languages if lang != reference]
    if config.correlation and config.divergence is None and len(others) >= 3:
        # the correlation reads these languages' passages after both runs: check the files now
        suite.check_passages(config.source_dir, [reference, *others])
    curves = None
    if config.correlation and config.divergence is not None:
        curves = read_divergence_table(config.divergence)
        missing = [lang for lang in languages if lang != reference and lang not in curves]
        if missing:
            raise ValueError(f"{config.divergence} has no divergence curve for {missing}")
        for lang, curve in curves.items():
            window.check(len(curve), f"the {len(curve)}-layer curve of {lang} in {config.divergence}")
    tokenizer = loaded.tokenizer if loaded is not None else load_tokenizer_for(folder, config.tokenizer, model_config)
    check_chat_template(tokenizer, config.eval.chat, config.eval.chat_template)
    # results record the answer format and the prompt template used
    config = dataclasses.replace(config, eval=task_settings(config.task, config.eval.resolved(tokenizer)))
    data = load_task(config.task, languages, config.eval, source_dir=config.source_dir, tfds_dir=config.tfds_dir)
    if loaded is None:
        loaded = load_model(folder, tokenizer, config.dtype)
    return PreparedSteerEval(config, reference, steer, plans, data, loaded, curves)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, Path):
        return str(value)
    return value


def _write_items(path: Path, base: list[ItemResult], steer: list[ItemResult]) -> None:
    def outcome(item: ItemResult) -> dict[str, Any]:
        return {"correct": item.correct, "prediction": item.prediction, "detail": item.detail}

    with atomic_path(path) as temp, temp.open("w", encoding="utf-8") as handle:
        for b, s in zip(base, steer):
            row = {"language": b.language, "id": b.id, "gold": b.gold, "baseline": outcome(b), "steered": outcome(s)}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def compute_divergence(loaded: LoadedModel, languages: Sequence[str], reference: str, config: SteerEvalConfig
                       ) -> dict[str, np.ndarray]:
    """Divergence curves from ``reference`` of ``languages`` on the task data's passages (FLORES), measured as
    analyze_routing does (``max_passages`` per language, prompts as the evaluation renders them)."""
    suite = get_suite(get_task(config.task).data)
    codes = (reference, *(lang for lang in dict.fromkeys(languages) if lang != reference))
    passages = suite.load_passages(config.source_dir, codes, config.tfds_dir, config.max_passages)
    settings = config.eval
    batches = passage_batches(loaded.tokenizer, passages, chat=settings.chat, chat_template=settings.chat_template,
                              chat_variables=settings.chat_variables, batch_size=settings.batch_size,
                              max_length=settings.max_length, truncation="keep_start")
    total = sum(len(rows) for rows in passages.values())
    with tqdm(total=total, desc=f"{suite.passages_name} routing", unit="passage", disable=not config.progress) as bar:
        corpora = route_languages(loaded.model, loaded.params, batches, seed=config.seed,
                                  stats_fn=routing_statistics(loaded.model), progress=bar.update)
    return divergence_curves(corpora, reference)


def _correlation(prepared: PreparedSteerEval, base: list[ItemResult], out: Path) -> dict[str, Any]:
    """Correlation files, or the reason they were skipped."""
    config, reference = prepared.config, prepared.reference
    others = [lang for lang in prepared.data.languages if lang != reference]
    if not config.correlation:
        return {"skipped": "turned off"}
    if len(others) < 3:
        return {"skipped": f"needs >= 3 evaluated languages besides {reference}, got {others}"}
    curves = prepared.divergence_curves
    passages = get_suite(get_task(config.task).data).passages_name
    source = str(config.divergence) if curves is not None else f"computed on {passages} passages"
    if curves is None:
        curves = compute_divergence(prepared.loaded, others, reference, config)
    rows = {row["language"]: row for row in accuracy_table(base) if row["language"] != ALL}
    accuracy = {lang: row["accuracy"] for lang, row in rows.items()}
    window = prepared.steer.window
    middle = {lang: window.mean(np.asarray(curves[lang], float)) for lang in others}
    result = {**correlate(middle, accuracy, n_boot=config.n_boot, seed=config.seed),
              "window": list(window), "divergence_source": source, "accuracy_source": "baseline run"}
    write_json(out / "correlation.json", result)
    plot_correlation(result["divergence"], result["accuracy"], result, out / "correlation.png",
                     xlabel=f"mean {NORMALISED_JSD} from {reference},\nMoE layers {window.first}-{window.last}",
                     ylabel=f"{config.task} accuracy (baseline)",
                     caption=f"{Path(prepared.loaded.folder).name}: {config.task}, {min(r['n'] for r in rows.values())}"
                             f" items per language",
                     accuracy_intervals={lang: (row["ci_low"], row["ci_high"]) for lang, row in rows.items()})
    return {"files": ["correlation.json", "correlation.png"], "source": source}


def execute(prepared: PreparedSteerEval, baseline: list[ItemResult] | None = None) -> dict[str, Any]:
    """Run the baseline (or reuse ``baseline`` when it holds every item) and the steered evaluation, write every
    output; returns the table, both runs' results and the correlation summary."""
    config, data = prepared.config, prepared.data
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(data.records)
    if baseline is not None:  # reuse it when it holds every item, in the order of the records
        by_key = {item.key: item for item in baseline}
        keys = [(r["language"], int(r["id"])) for r in data.records]
        baseline = [by_key[key] for key in keys] if all(key in by_key for key in keys) else None
    if baseline is None:
        with tqdm(total=n, desc="baseline", unit="item", disable=not config.progress) as bar:
            baseline = run_baseline(prepared.loaded, data, config.eval, progress=bar.update)
    with tqdm(total=n, desc="steered", unit="item", disable=not config.progress) as bar:
        steered = run_steered(prepared.loaded, data, config.eval, prepared.plans, progress=bar.update)
    table = paired_table(baseline, steered, n_boot=config.n_boot, seed=config.seed)
    _write_items(out / "items.jsonl", baseline, steered)
    write_csv(out / "results.csv", table)
    write_json(out / "results.json", {"task": config.task, "mode": config.mode, "control": config.control,
                                      "table": table})
    title = f"{config.task}: {config.mode} steering" + (f", control {config.control}" if config.control else "")
    per_language = min(row["n"] for row in table)
    plot_steering(table, out / "steer_eval.png", title=title,
                  caption=f"{Path(prepared.loaded.folder).name}: {config.task}, {per_language} items per language, "
                          f"MoE layers {prepared.steer.window.first}-{prepared.steer.window.last}")
    correlation = _correlation(prepared, baseline, out)
    write_json(out / "config.json", _jsonable({
        "config": config, "model_folder": prepared.loaded.folder,
        "model": {"family": prepared.loaded.config.family, "num_moe_layers": prepared.loaded.config.num_moe_layers,
                  "num_experts": prepared.loaded.config.num_experts, "top_k": prepared.loaded.config.top_k},
        "steering": prepared.steer, "window_indexing": "MoE layers, 0-indexed, inclusive",
        "steered_experts": {lang: plan.to_json() for lang, plan in prepared.plans.items()},
        "languages": data.languages, "items_per_language": {lang: sum(r["language"] == lang for r in data.records)
                                                            for lang in data.languages},
        "exemplar_ids": {lang: [shot.get("id") for shot in shots] for lang, shots in data.exemplars.items()},
        "eos_ids": prepared.loaded.eos_ids, "correlation": correlation,
    }))
    return {"table": table, "baseline": baseline, "steered": steered, "correlation": correlation}
