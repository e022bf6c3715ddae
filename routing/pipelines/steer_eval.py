"""scripts/steer_eval.py as functions: check every input, then run baseline and steered, write the results.

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
"""
from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from moe.atomic import check_output_folder

from routing.correlation import REFERENCE, compute_divergence, correlate, middle_divergence, read_divergence_table
from routing.eval_figures import plot_correlation, plot_steering
from routing.evaluation import ALL, ItemResult, accuracy_table, paired_table
from routing.expert_search import ExpertSets, check_window
from routing.model_io import LoadedModel, load_model, load_tokenizer_for, peek_config
from routing.report import parse_window
from routing.steering_eval import SteeringPlan, SteerSettings, plan_steering, read_experts, run_baseline, run_steered
from routing.store import atomic_path, write_json
from routing.tasks import EvalSettings, TaskData, check_task, flores_language, load_task


@dataclasses.dataclass(frozen=True)
class SteerEvalConfig:
    """One steer_eval run. ``window`` "A:B" (MoE layers, 0-indexed, inclusive) or None: the expert file's.

    ``source_dir``: data laid out like shared/data; ``tfds_dir``: TFDS prepared files. ``divergence``: an
    analyze_routing table (JSON or CSV) for the correlation, else it is computed on FLORES passages
    (``max_passages`` per language) unless ``correlation`` is False.
    """

    model: str
    task: str
    experts: Path
    out_dir: Path
    languages: tuple[str, ...]
    mode: str = "soft"
    lam: float | None = None  # soft only (None: steering_eval.DEFAULT_LAM)
    window: str | None = None
    control: str | None = None
    eps: float = 0.01
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


@dataclasses.dataclass
class PreparedSteerEval:
    config: SteerEvalConfig
    steer: SteerSettings
    plans: dict[str, SteeringPlan]
    data: TaskData
    loaded: LoadedModel
    divergence_curves: dict[str, Any] | None


def _window(config: SteerEvalConfig, experts: ExpertSets | list, num_moe_layers: int) -> tuple[int, int]:
    if config.window is not None:
        return parse_window(config.window, num_moe_layers)
    if isinstance(experts, ExpertSets):
        return check_window(experts.settings.window, num_moe_layers)
    raise ValueError("no window: pass one (FIRST:LAST MoE layers), or an expert file from find_experts")


def prepare(config: SteerEvalConfig, loaded: LoadedModel | None = None) -> PreparedSteerEval:
    """Check everything that can be checked without weights, read the data, then load the model (or reuse
    ``loaded``, which must be the same model folder)."""
    check_task(config.task)
    check_output_folder(config.out_dir, may_exist=True)
    if config.n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {config.n_boot}")
    languages = tuple(dict.fromkeys(flores_language(code) for code in config.languages))
    if not languages:
        raise ValueError("no languages given")
    folder, model_config = peek_config(config.model) if loaded is None else (loaded.folder, loaded.config)
    experts = read_experts(config.experts)
    window = _window(config, experts, model_config.num_moe_layers)
    steer = SteerSettings(window=window, mode=config.mode, lam=config.lam, eps=config.eps, eps_std=config.eps_std,
                          control=config.control, seed=config.seed)
    plans = plan_steering(experts, steer, languages, model_config.num_moe_layers, model_config.num_experts)
    curves = None
    if config.correlation and config.divergence is not None:
        curves = read_divergence_table(config.divergence)
        missing = [lang for lang in languages if lang != REFERENCE and lang not in curves]
        if missing:
            raise ValueError(f"{config.divergence} has no divergence curve for {missing}")
        middle_divergence(curves, window)  # the window must fit the table's curves
    tokenizer = loaded.tokenizer if loaded is not None else load_tokenizer_for(folder, config.tokenizer, model_config)
    if config.eval.chat and config.eval.chat_template is None and not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template: pass a chat template or use plain prompts")
    config = dataclasses.replace(config, eval=config.eval.resolved(tokenizer))  # results record the answer format
    data = load_task(config.task, languages, config.eval, source_dir=config.source_dir, data_dir=config.tfds_dir)
    if loaded is None:
        loaded = load_model(folder, tokenizer, config.dtype)
    return PreparedSteerEval(config, steer, plans, data, loaded, curves)


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


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_items(path: Path, base: list[ItemResult], steer: list[ItemResult]) -> None:
    def outcome(item: ItemResult) -> dict[str, Any]:
        return {"correct": item.correct, "prediction": item.prediction, "detail": item.detail}

    with atomic_path(path) as temp, temp.open("w", encoding="utf-8") as handle:
        for b, s in zip(base, steer):
            row = {"language": b.language, "id": b.id, "gold": b.gold, "baseline": outcome(b), "steered": outcome(s)}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _correlation(prepared: PreparedSteerEval, base: list[ItemResult], out: Path) -> dict[str, Any]:
    """Correlation files, or the reason they were skipped."""
    config = prepared.config
    others = [lang for lang in prepared.data.languages if lang != REFERENCE]
    if not config.correlation:
        return {"skipped": "turned off"}
    if len(others) < 3:
        return {"skipped": f"needs >= 3 evaluated languages besides {REFERENCE}, got {others}"}
    curves = prepared.divergence_curves
    source = str(config.divergence) if curves is not None else "computed on FLORES passages"
    if curves is None:
        loaded = prepared.loaded
        curves = compute_divergence(loaded, others, source_dir=config.source_dir, data_dir=config.tfds_dir,
                                    chat=config.eval.chat, chat_template=config.eval.chat_template,
                                    chat_variables=config.eval.chat_variables, max_passages=config.max_passages,
                                    batch_size=config.eval.batch_size, max_length=config.eval.max_length,
                                    seed=config.seed)
    accuracy = {row["language"]: row["accuracy"] for row in accuracy_table(base) if row["language"] != ALL}
    middle = middle_divergence({lang: curves[lang] for lang in others}, prepared.steer.window)
    result = {**correlate(middle, accuracy, n_boot=config.n_boot, seed=config.seed),
              "window": list(prepared.steer.window), "divergence_source": source,
              "accuracy_source": "baseline run"}
    write_json(out / "correlation.json", result)
    plot_correlation(result["divergence"], result["accuracy"], result, out / "correlation.png",
                     xlabel=f"mean divergence from {REFERENCE}, MoE layers {prepared.steer.window[0]}-"
                            f"{prepared.steer.window[1]}")
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
    _write_csv(out / "results.csv", table)
    write_json(out / "results.json", {"task": config.task, "mode": config.mode, "control": config.control,
                                      "table": table})
    title = f"{config.task}: {config.mode} steering" + (f", control {config.control}" if config.control else "")
    plot_steering(table, out / "steer_eval.png", title=title)
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
