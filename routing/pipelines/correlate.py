"""scripts/correlate.py as functions: middle-layer routing divergence vs task accuracy across languages (BELEBELE;
with ``data="organism"``, the organism's arithmetic task on its passages and codes).

The paper's claim 2: the lower a language's middle-layer divergence from English, the better the model does
in it. ``prepare`` checks every input (languages that lack FLORES or BELEBELE data, an empty selection,
stored results computed under other settings) before loading the model; ``execute`` then

1. measures each language's routing on FLORES passages exactly as scripts/analyze_routing.py does, storing
   per-language summaries in ``{routing_dir}/languages/`` (default: ``out_dir``) as each completes, and
   reusing those already stored under the same settings (point ``routing_dir`` at an analyze_routing
   output folder to reuse its results);
2. takes the divergence curves (entropy-normalised JSD from the reference, per MoE layer), and the middle
   window (given, or selected from the mean curve as analyze_routing does);
3. scores the task (BELEBELE: log-likelihood multiple choice; organism: its greedy answer; baseline model) in
   each language on all of its items (or the first ``limit``), storing each language's items in
   ``{task}/{code}.json`` (``belebele/{code}.json``) to resume;
4. correlates the mean divergence over the window with accuracy across the languages other than the
   reference: Pearson and Spearman with p-values and bootstrap intervals over languages.

Outputs in ``out_dir``: ``correlation.json`` (statistics, settings, per-language values), ``correlation.csv``
(one row per language), ``divergence_by_layer.csv`` (the curves) and ``correlation.png`` (the scatter). Item
results are stored in ``{task}/{code}.json`` and the columns named for the task (``belebele_accuracy``, ...).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from moe.atomic import check_output_folder
from routing.analysis import divergence_curves
from routing.data.belebele import belebele_languages
from routing.data.organism import organism_languages
from routing.data.suites import DataSuite, get_suite
from routing.eval.results import ItemResult, accuracy_table
from routing.eval.tasks import EvalSettings, TaskData, get_task, load_task, multiple_choice, run_task, task_settings
from routing.outputs.figures import NORMALISED_JSD, plot_correlation
from routing.outputs.files import write_csv, write_json
from routing.outputs.store import ItemStore
from routing.pipelines import analyze_routing
from routing.pipelines.models import LoadedModel, stop_token_ids
from routing.scoring import correlate

MEASURE = "entropy-normalised JSD of expert distributions from {reference}, mean over MoE layers {first}-{last}"
CORRELATE_TASKS = ("belebele", "organism")  # the data suites' correlation tasks


@dataclasses.dataclass(frozen=True)
class CorrelateConfig(analyze_routing.RoutingConfig):
    """One correlation study: analyze_routing's options, with its defaults, so its stored results (in
    ``routing_dir``, default ``out_dir``) can be reused, except that ``languages`` None means every language
    with data for the task in ``source_dir``. ``task``: "belebele" or "organism" (None: the data's, belebele
    for the real data). The reference is always analysed and scored, but left out of the correlation. ``eval``
    decides how the task is scored (its ``chat``/``chat_template`` are replaced by this config's); ``n_boot``
    bootstrap resamples.
    """

    task: str | None = None
    routing_dir: Path | None = None
    eval: EvalSettings = EvalSettings()
    n_boot: int = 10_000


@dataclasses.dataclass
class PreparedCorrelation:
    config: CorrelateConfig
    task: str
    analysis: analyze_routing.PreparedAnalysis
    task_codes: dict[str, str]  # language code -> the code of the task's files
    tasks: dict[str, TaskData]  # the task's items per language
    eval_settings: EvalSettings
    task_settings: dict[str, Any]
    loaded: LoadedModel


def choose_task(config: CorrelateConfig) -> str:
    """The task scored: ``config.task``, or the data's; ValueError if the task is of other data."""
    suite = get_suite(config.data)
    task = config.task if config.task is not None else suite.correlation_task
    if task not in CORRELATE_TASKS:
        raise ValueError(f"correlate scores one of {CORRELATE_TASKS}, not {task!r}")
    if get_task(task).data != suite.name:
        raise ValueError(f"task {task!r} runs on the {get_task(task).data} data: pass --data {get_task(task).data}")
    return task


def task_languages(task: str, source_dir: Path | None) -> dict[str, str]:
    """Language code -> the code of the task's files, of every language ``task`` has data for (BELEBELE's files
    in ``source_dir``, or every organism language)."""
    if task == "belebele":
        if source_dir is None:
            raise FileNotFoundError("BELEBELE has no public download: pass a folder laid out like shared/data "
                                    "(--data-dir)")
        return belebele_languages(source_dir)
    return {code: code for code in organism_languages(source_dir)}


def choose_languages(suite: DataSuite, task: str, requested: Sequence[str] | None, reference: str | None,
                     source_dir: Path | None) -> dict[str, str]:
    """(language code -> the task's file code) of the reference (None: the data's) and the chosen languages
    (None: every language the task has), the reference first."""
    available = task_languages(task, source_dir)
    reference = suite.reference(source_dir) if reference is None else suite.codes([reference], source_dir)[0]
    codes = suite.codes(requested if requested is not None else list(available), source_dir)
    chosen = list(dict.fromkeys([reference, *codes]))
    missing = [code for code in chosen if code not in available]
    if missing:
        where = f" in {Path(source_dir) / 'belebele'}" if task == "belebele" else ""
        raise ValueError(f"no {get_task(task).title} data for {missing}{where}; available: "
                         f"{', '.join(f'{c} ({s})' for c, s in available.items())}")
    if len(chosen) < 4:
        raise ValueError(f"a correlation needs >= 3 languages besides the reference {reference}, got "
                         f"{chosen[1:]}")
    return {code: available[code] for code in chosen}


def _jsonable(settings: EvalSettings) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def prepare(config: CorrelateConfig) -> PreparedCorrelation:
    """Check every input (stored results included) before any data is prepared, read and tokenize the data,
    then load the model; no results are touched."""
    if config.n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {config.n_boot}")
    task = choose_task(config)
    codes = choose_languages(get_suite(config.data), task, config.languages, config.reference, config.source_dir)
    routing = {field.name: getattr(config, field.name) for field in dataclasses.fields(analyze_routing.RoutingConfig)}
    analysis_config = analyze_routing.AnalysisConfig(**{
        **routing, "out_dir": Path(config.routing_dir or config.out_dir), "languages": list(codes),
        "reference": next(iter(codes))})
    plan = analyze_routing.plan_analysis(analysis_config)
    check_output_folder(config.out_dir, may_exist=True)
    settings = task_settings(task, dataclasses.replace(config.eval, chat=config.chat,
                                                       chat_template=config.chat_template))
    stored_settings = {"model": str(plan.folder.resolve()), "model_fingerprint": plan.common["model_fingerprint"],
                       "dtype": config.dtype, "eval": _jsonable(settings),
                       "tokenizer": str(Path(config.tokenizer).resolve()) if config.tokenizer else None}
    if not config.restart:
        store = ItemStore(Path(config.out_dir) / task)
        for code in codes:
            store.load(code, stored_settings)  # StaleResultError before any work
    tasks = {code: load_task(task, [code], settings, source_dir=config.source_dir, tfds_dir=config.tfds_dir)
             for code in codes}
    analysis = analyze_routing.prepare(analysis_config, plan)
    loaded = LoadedModel(plan.folder, analysis.model, analysis.params, plan.tokenizer,
                         eos_ids=stop_token_ids(plan.tokenizer, plan.folder))
    return PreparedCorrelation(config, task, analysis, codes, tasks, settings, stored_settings, loaded)


def _score(prepared: PreparedCorrelation) -> dict[str, list[ItemResult]]:
    """Each language's task items: stored ones reused, the others scored and stored."""
    store = ItemStore(Path(prepared.config.out_dir) / prepared.task)
    results = {}
    total = sum(len(data.records) for data in prepared.tasks.values())
    with tqdm(total=total, desc=get_task(prepared.task).title, unit="item",
              disable=not prepared.config.progress) as bar:
        for code, data in prepared.tasks.items():
            items = None if prepared.config.restart else store.load(code, prepared.task_settings)
            if items is None:
                loaded = prepared.loaded
                items = run_task(loaded.model, loaded.params, loaded.tokenizer, data, prepared.eval_settings,
                                 eos_ids=loaded.eos_ids, progress=bar.update)
                store.save(code, items, prepared.task_settings)
            else:
                bar.update(len(items))
            results[code] = items
    return results


def execute(prepared: PreparedCorrelation) -> dict[str, Any]:
    """Analyse routing and score the task (or reuse stored results), correlate, write every output; returns the
    correlation record (as written to correlation.json)."""
    config, analysis = prepared.config, prepared.analysis
    out = Path(config.out_dir)
    reference = analysis.languages[0]
    if config.restart:
        for code in analysis.languages:
            analysis.store.remove(code)
    corpora = analyze_routing.analyze_languages(analysis)
    curves = divergence_curves(corpora, reference)
    moe_layers = list(analysis.model.config.moe_layers)
    window = analyze_routing.choose_window(curves, config.window, config.window_fraction, config.window_margin)
    middle = {code: window.mean(np.asarray(curve, float)) for code, curve in curves.items()}
    items = _score(prepared)
    accuracy = {row["language"]: row for row in accuracy_table([i for rows in items.values() for i in rows])}
    stats = correlate(middle, {code: accuracy[code]["accuracy"] for code in middle}, n_boot=config.n_boot,
                      seed=config.seed)
    measure = MEASURE.format(reference=reference, first=window.first, last=window.last)
    model_name = Path(analysis.settings[reference]["model"]).name
    task, title = prepared.task, get_task(prepared.task).title
    how = ("log-likelihood of the options" if get_task(task).evaluate is multiple_choice
           else "greedy answer, its last number scored")
    rows = [{"language": code, f"{task}_code": prepared.task_codes[code],
             "middle_divergence": middle.get(code), f"{task}_accuracy": accuracy[code]["accuracy"],
             "accuracy_ci_low": accuracy[code]["ci_low"], "accuracy_ci_high": accuracy[code]["ci_high"],
             "items": accuracy[code]["n"], "in_correlation": code in stats["languages"]}
            for code in analysis.languages]
    record = {
        **stats, "measure": measure, "accuracy_measure": f"{title} accuracy ({how}, baseline model, no steering)",
        "model": analysis.settings[reference]["model"], "reference": reference,
        "window": {"moe_layers": list(window), "decoder_layers": [moe_layers[window.first], moe_layers[window.last]],
                   "source": "override" if config.window else "selected",
                   "indexing": "0-indexed, inclusive"},
        "per_language": rows, "routing_settings": {k: v for k, v in analysis.settings[reference].items()
                                                   if k != "inputs_sha1"},
        "routing_dir": str(Path(config.routing_dir or config.out_dir)),
        f"{task}_settings": prepared.task_settings, "n_boot": config.n_boot, "seed": config.seed,
    }
    write_csv(out / "correlation.csv", rows)
    write_csv(out / "divergence_by_layer.csv",
               [{"language": code, "moe_layer": layer, "decoder_layer": moe_layers[layer], "divergence": float(v)}
                for code, curve in curves.items() for layer, v in enumerate(np.asarray(curve))])
    items_each = min(accuracy[code]["n"] for code in stats["languages"]) if stats["languages"] else 0
    plot_correlation(stats["divergence"], stats["accuracy"], stats, out / "correlation.png",
                     xlabel=f"mean {NORMALISED_JSD} from {reference},\nMoE layers {window.first}-{window.last} "
                            f"({get_suite(config.data).passages_title}, {len(corpora[reference].keys)} passages)",
                     ylabel=f"{title} accuracy (baseline)",
                     caption=f"{model_name}: routing divergence vs {title}, {items_each} items per language",
                     accuracy_intervals={code: (accuracy[code]["ci_low"], accuracy[code]["ci_high"])
                                         for code in stats["languages"]})
    write_json(out / "correlation.json", record)
    return record
