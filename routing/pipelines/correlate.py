"""scripts/correlate.py as functions: middle-layer routing divergence vs BELEBELE accuracy across languages.

The paper's claim 2: the lower a language's middle-layer divergence from English, the better the model does
in it. ``prepare`` checks every input (languages that lack FLORES or BELEBELE data, an empty selection,
stored results computed under other settings) before loading the model; ``execute`` then

1. measures each language's routing on FLORES passages exactly as scripts/analyze_routing.py does, storing
   per-language summaries in ``{routing_dir}/languages/`` (default: ``out_dir``) as each completes, and
   reusing those already stored under the same settings (point ``routing_dir`` at an analyze_routing
   output folder to reuse its results);
2. takes the divergence curves (entropy-normalised JSD from the reference, per MoE layer), and the middle
   window (given, or selected from the mean curve as analyze_routing does);
3. scores BELEBELE (log-likelihood multiple choice, baseline model) in each language on all of its items
   (or the first ``limit``), storing each language's items in ``belebele/{code}.json`` to resume;
4. correlates the mean divergence over the window with accuracy across the languages other than the
   reference: Pearson and Spearman with p-values and bootstrap intervals over languages.

Outputs in ``out_dir``: ``correlation.json`` (statistics, settings, per-language values), ``correlation.csv``
(one row per language), ``divergence_by_layer.csv`` (the curves) and ``correlation.png`` (the scatter).
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
from routing.data.languages import flores_language
from routing.eval.results import ItemResult, accuracy_table
from routing.eval.tasks import EvalSettings, TaskData, load_task, run_task
from routing.outputs.figures import NORMALISED_JSD, plot_correlation
from routing.outputs.files import write_csv, write_json
from routing.outputs.store import ItemStore
from routing.pipelines import analyze_routing
from routing.pipelines.models import LoadedModel
from routing.scoring import correlate

MEASURE = "entropy-normalised JSD of expert distributions from {reference}, mean over MoE layers {first}-{last}"


@dataclasses.dataclass(frozen=True)
class CorrelateConfig(analyze_routing.RoutingConfig):
    """One correlation study: analyze_routing's options, with its defaults, so its stored results (in
    ``routing_dir``, default ``out_dir``) can be reused, except that ``languages`` None means every language
    with a BELEBELE file in ``source_dir``. The reference is always analysed and scored, but left out of the
    correlation. ``eval`` decides how BELEBELE is scored (its ``chat``/``chat_template`` are replaced by this
    config's); ``n_boot`` bootstrap resamples.
    """

    routing_dir: Path | None = None
    eval: EvalSettings = EvalSettings()
    n_boot: int = 10_000


@dataclasses.dataclass
class PreparedCorrelation:
    config: CorrelateConfig
    analysis: analyze_routing.PreparedAnalysis
    belebele_codes: dict[str, str]  # FLORES code -> BELEBELE file code
    tasks: dict[str, TaskData]  # BELEBELE items per language
    eval_settings: EvalSettings
    belebele_settings: dict[str, Any]
    loaded: LoadedModel


def choose_languages(requested: Sequence[str] | None, reference: str, source_dir: Path) -> dict[str, str]:
    """(FLORES code -> BELEBELE code) of the reference and the chosen languages, the reference first."""
    available = belebele_languages(source_dir)
    codes = [flores_language(code) for code in (requested if requested is not None else available)]
    chosen = list(dict.fromkeys([reference, *codes]))
    missing = [code for code in chosen if code not in available]
    if missing:
        raise ValueError(f"no BELEBELE data for {missing} in {source_dir / 'belebele'}; available: "
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
    reference = flores_language(config.reference)
    codes = choose_languages(config.languages, reference, Path(config.source_dir))
    routing = {field.name: getattr(config, field.name) for field in dataclasses.fields(analyze_routing.RoutingConfig)}
    analysis_config = analyze_routing.AnalysisConfig(**{
        **routing, "source_dir": Path(config.source_dir), "out_dir": Path(config.routing_dir or config.out_dir),
        "languages": list(codes), "reference": reference})
    plan = analyze_routing.plan_analysis(analysis_config)
    check_output_folder(config.out_dir, may_exist=True)
    settings = dataclasses.replace(config.eval, chat=config.chat, chat_template=config.chat_template)
    belebele_settings = {"model": str(plan.folder.resolve()), "model_fingerprint": plan.common["model_fingerprint"],
                         "dtype": config.dtype, "eval": _jsonable(settings),
                         "tokenizer": str(Path(config.tokenizer).resolve()) if config.tokenizer else None}
    if not config.restart:
        store = ItemStore(Path(config.out_dir) / "belebele")
        for code in codes:
            store.load(code, belebele_settings)  # StaleResultError before any work
    tasks = {code: load_task("belebele", [code], settings, source_dir=config.source_dir, tfds_dir=config.tfds_dir)
             for code in codes}
    analysis = analyze_routing.prepare(analysis_config, plan)
    loaded = LoadedModel(plan.folder, analysis.model, analysis.params, plan.tokenizer, eos_ids=set())
    return PreparedCorrelation(config, analysis, codes, tasks, settings, belebele_settings, loaded)


def _belebele(prepared: PreparedCorrelation) -> dict[str, list[ItemResult]]:
    """Each language's BELEBELE items: stored ones reused, the others scored and stored."""
    store = ItemStore(Path(prepared.config.out_dir) / "belebele")
    results = {}
    total = sum(len(data.records) for data in prepared.tasks.values())
    with tqdm(total=total, desc="BELEBELE", unit="item", disable=not prepared.config.progress) as bar:
        for code, data in prepared.tasks.items():
            items = None if prepared.config.restart else store.load(code, prepared.belebele_settings)
            if items is None:
                loaded = prepared.loaded
                items = run_task(loaded.model, loaded.params, loaded.tokenizer, data, prepared.eval_settings,
                                 progress=bar.update)
                store.save(code, items, prepared.belebele_settings)
            else:
                bar.update(len(items))
            results[code] = items
    return results


def execute(prepared: PreparedCorrelation) -> dict[str, Any]:
    """Analyse routing and score BELEBELE (or reuse stored results), correlate, write every output; returns the
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
    items = _belebele(prepared)
    accuracy = {row["language"]: row for row in accuracy_table([i for rows in items.values() for i in rows])}
    stats = correlate(middle, {code: accuracy[code]["accuracy"] for code in middle}, n_boot=config.n_boot,
                      seed=config.seed)
    measure = MEASURE.format(reference=reference, first=window.first, last=window.last)
    model_name = Path(analysis.settings[reference]["model"]).name
    rows = [{"language": code, "belebele_code": prepared.belebele_codes[code],
             "middle_divergence": middle.get(code), "belebele_accuracy": accuracy[code]["accuracy"],
             "accuracy_ci_low": accuracy[code]["ci_low"], "accuracy_ci_high": accuracy[code]["ci_high"],
             "items": accuracy[code]["n"], "in_correlation": code in stats["languages"]}
            for code in analysis.languages]
    record = {
        **stats, "measure": measure, "accuracy_measure": "BELEBELE accuracy (log-likelihood of the options, "
                                                          "baseline model, no steering)",
        "model": analysis.settings[reference]["model"], "reference": reference,
        "window": {"moe_layers": list(window), "decoder_layers": [moe_layers[window.first], moe_layers[window.last]],
                   "source": "override" if config.window else "selected",
                   "indexing": "0-indexed, inclusive"},
        "per_language": rows, "routing_settings": {k: v for k, v in analysis.settings[reference].items()
                                                   if k != "inputs_sha1"},
        "routing_dir": str(Path(config.routing_dir or config.out_dir)),
        "belebele_settings": prepared.belebele_settings, "n_boot": config.n_boot, "seed": config.seed,
    }
    write_csv(out / "correlation.csv", rows)
    write_csv(out / "divergence_by_layer.csv",
               [{"language": code, "moe_layer": layer, "decoder_layer": moe_layers[layer], "divergence": float(v)}
                for code, curve in curves.items() for layer, v in enumerate(np.asarray(curve))])
    items_each = min(accuracy[code]["n"] for code in stats["languages"]) if stats["languages"] else 0
    plot_correlation(stats["divergence"], stats["accuracy"], stats, out / "correlation.png",
                     xlabel=f"mean {NORMALISED_JSD} from {reference},\nMoE layers {window.first}-{window.last} "
                            f"(FLORES-200, {len(corpora[reference].keys)} passages)",
                     ylabel="BELEBELE accuracy (baseline)",
                     caption=f"{model_name}: routing divergence vs BELEBELE, {items_each} items per language",
                     accuracy_intervals={code: (accuracy[code]["ci_low"], accuracy[code]["ci_high"])
                                         for code in stats["languages"]})
    write_json(out / "correlation.json", record)
    return record
