"""Routing analysis of parallel passages (FLORES, or the organism's: ``data``, ``routing.data.suites``), language by
language and resumable (scripts/analyze_routing.py).

`plan_analysis` checks every input before any data is prepared or weights are loaded (unknown language codes
with close matches, missing data files, a path that is not a model, a tokenizer without a chat template,
stored results computed under other settings); `prepare` then reads the passages, checks stored results
against the model inputs too, and loads the model; `execute` analyses the languages not already stored and
writes, in ``out_dir``:

- ``languages/{code}.npz``: per-passage summaries of each language (`routing.outputs.store.LanguageStore`),
  saved atomically as each language completes, tagged with the settings they were computed under;
- ``routing_table.csv`` and ``routing_table.json``: per-layer, per-language divergence from the reference,
  raw JSD, routing entropy, consistency (JSON also: activation rates, settings, window);
- ``middle_window.json``: the window (`routing.outputs.tables.window_record`; 0-indexed, inclusive);
- ``divergence_by_layer.png`` and ``expert_usage.png``.

The final files are removed when a run starts and written only once every language is done, the JSON table
last, so an interrupted run never leaves results that look complete.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import moe
from moe.atomic import check_output_folder
from routing.analysis import divergence_intervals, select_middle_window, statistics_fn
from routing.data.suites import DataSuite, get_suite
from routing.data.tokenize import TokenBatch
from routing.outputs.figures import NORMALISED_JSD, RAW_JSD, plot_divergence_curves, plot_expert_usage
from routing.outputs.files import StaleResultError, write_json
from routing.outputs.store import LanguageStore
from routing.outputs.tables import routing_table, window_record, write_table_csv
from routing.pipelines.models import (DTYPES, check_chat_template, check_dtype, load_tokenizer_for,
                                      model_fingerprint)
from routing.pipelines.passages import passage_batches, route_languages
from routing.stats import CorpusRouting
from routing.window import Window

FINAL_FILES = ("routing_table.json", "routing_table.csv", "middle_window.json", "divergence_by_layer.png",
               "expert_usage.png")


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    """One routing analysis of parallel passages: what to analyse and how (correlate.py takes the same options,
    so it can reuse stored results). `data`: the data suite (``routing.data.suites``: "real", FLORES from
    `source_dir`, a folder laid out like shared/data; "organism", the organism folder `source_dir`, None: the
    model's folder). `languages` None: the data's default (the paper's languages present in `source_dir`; every
    organism language); `reference` None: the data's (eng_Latn; the organism's base), always included.
    `tokenizer` None: the model folder's. `chat_template`: Jinja text replacing the tokenizer's. `window` "A:B"
    overrides the selected window.
    """

    model: str
    out_dir: Path
    source_dir: Path | None = None
    data: str = "real"
    languages: Sequence[str] | None = None
    reference: str | None = None
    tokenizer: str | None = None
    chat: bool = True
    chat_template: str | None = None
    max_passages: int | None = None
    batch_size: int = 8
    max_length: int = 4096
    truncation: str = "error"
    num_pairs: int = 64
    seed: int = 0
    dtype: str = "float32"
    window: str | None = None
    window_fraction: float = 0.25
    window_margin: int = 0
    tfds_dir: Path | None = None
    restart: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_dir", get_suite(self.data).data_dir(self.source_dir, self.model))


@dataclasses.dataclass(frozen=True)
class AnalysisConfig(RoutingConfig):
    """A `RoutingConfig` and the MoE layers of its expert-usage heatmap (None: first, window centre, last)."""

    heatmap_layers: Sequence[int] | None = None


@dataclasses.dataclass
class PreparedAnalysis:
    """Checked inputs, ready to run: token batches and settings per language, the loaded model."""

    config: AnalysisConfig
    languages: tuple[str, ...]
    batches: dict[str, list[TokenBatch]]
    settings: dict[str, dict[str, Any]]
    model: Any
    params: Any
    store: LanguageStore


def choose_languages(suite: DataSuite, requested: Sequence[str] | None, reference: str | None,
                     source_dir: Path | None) -> tuple[str, ...]:
    """The reference (None: the data's) first, then the requested (None: the data's default) languages; checks
    codes (naming close matches) and the passage files."""
    if requested is not None and not requested:
        raise ValueError("no languages given")
    reference = suite.reference(source_dir) if reference is None else suite.codes([reference], source_dir)[0]
    requested = suite.default_languages(source_dir) if requested is None else suite.codes(requested, source_dir)
    chosen = (reference, *(code for code in requested if code != reference))
    if len(chosen) < 2:
        raise ValueError(f"empty selection: no language besides the reference {reference}")
    suite.check_passages(source_dir, chosen)
    return chosen


def inputs_digest(batches: Sequence[TokenBatch]) -> str:
    """A digest of token batches (ids, masks, keys): equal digests mean identical model inputs."""
    digest = hashlib.sha1()
    for batch in batches:
        digest.update(batch.input_ids.tobytes() + batch.attention_mask.tobytes() + repr(batch.keys).encode())
    return digest.hexdigest()


def choose_window(curves: Mapping[str, np.ndarray], window: str | None, fraction: float, margin: int
                  ) -> Window:
    """The window ``"A:B"`` if given (checked against the curves' length), else the valley of the mean
    curve (``routing.analysis.select_middle_window`` with ``fraction`` and ``margin``)."""
    if window is None:
        return select_middle_window(dict(curves), fraction, margin)
    return Window.parse(window).check(len(next(iter(curves.values()))))


@dataclasses.dataclass
class AnalysisPlan:
    """What `plan_analysis` checked before any data is read: the languages, the model folder and its config,
    the tokenizer, the settings every stored language must have been computed under (less its inputs), and
    the store."""

    languages: tuple[str, ...]
    folder: Path
    model_config: moe.ModelConfig
    tokenizer: Any
    common: dict[str, Any]
    store: LanguageStore


def check_stored(store: LanguageStore, settings: Mapping[str, Mapping[str, Any]], ignore: Sequence[str] = ()
                 ) -> None:
    """StaleResultError listing every stored language (of ``settings``, language -> settings) computed under
    other settings, ``ignore`` aside."""
    stale = []
    for code, wanted in settings.items():
        try:
            store.check(code, wanted, ignore)
        except StaleResultError as err:
            stale.append(str(err))
    if stale:
        raise StaleResultError("stored results do not match this run; pass --restart to recompute them or "
                               "choose another --out:\n  " + "\n  ".join(stale))


def plan_analysis(config: AnalysisConfig) -> AnalysisPlan:
    """Check every input that can be checked before data is prepared or weights are loaded: option values,
    languages and data files, the output folder, the model config, window and heatmap layers, the tokenizer
    and its chat template, and stored results (against everything but the model inputs)."""
    for name in ("batch_size", "max_length", "num_pairs"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.max_passages is not None and config.max_passages < 1:
        raise ValueError(f"empty selection: max_passages must be >= 1, got {config.max_passages}")
    if not 0 <= config.window_fraction <= 1 or config.window_margin < 0:
        raise ValueError(f"window fraction must be in [0, 1] and margin >= 0, got {config.window_fraction}, "
                         f"{config.window_margin}")
    check_dtype(config.dtype)
    languages = choose_languages(get_suite(config.data), config.languages, config.reference, config.source_dir)
    check_output_folder(config.out_dir, may_exist=True)
    folder, model_config = moe.load_config(config.model)
    num_layers = model_config.num_moe_layers
    if config.window is not None:
        Window.parse(config.window).check(num_layers)
    bad_layers = [layer for layer in config.heatmap_layers or () if not 0 <= layer < num_layers]
    if bad_layers:
        raise ValueError(f"heatmap layers {bad_layers} are not MoE-layer indices in [0, {num_layers})")
    tokenizer = load_tokenizer_for(folder, config.tokenizer, model_config)
    check_chat_template(tokenizer, config.chat, config.chat_template)
    common = {"model": str(folder.resolve()), "model_fingerprint": model_fingerprint(folder), "dtype": config.dtype,
              "tokenizer": str(Path(config.tokenizer).resolve()) if config.tokenizer else None,
              "chat": config.chat, "max_passages": config.max_passages, "max_length": config.max_length,
              "truncation": config.truncation, "batch_size": config.batch_size, "num_pairs": config.num_pairs,
              "seed": config.seed}
    store = LanguageStore(Path(config.out_dir) / "languages")
    if not config.restart:
        check_stored(store, {code: common for code in languages}, ignore=("inputs_sha1",))
    return AnalysisPlan(languages, folder, model_config, tokenizer, common, store)


def prepare(config: AnalysisConfig, plan: AnalysisPlan | None = None) -> PreparedAnalysis:
    """Check every input (`plan_analysis`, unless ``plan`` is its result for ``config``), read and tokenize the
    passages, check stored results against them, then load the model; no results are touched."""
    plan = plan_analysis(config) if plan is None else plan
    languages = plan.languages
    passages = get_suite(config.data).load_passages(config.source_dir, languages, config.tfds_dir,
                                                    config.max_passages)
    empty = [code for code, rows in passages.items() if not rows]
    if empty:
        raise ValueError(f"empty selection: no passages for {', '.join(empty)}")
    batches = passage_batches(plan.tokenizer, passages, chat=config.chat, chat_template=config.chat_template,
                              batch_size=config.batch_size, max_length=config.max_length,
                              truncation=config.truncation)
    settings = {code: {**plan.common, "inputs_sha1": inputs_digest(batches[code])} for code in languages}
    if not config.restart:
        check_stored(plan.store, settings)
    model, params = moe.from_pretrained(plan.folder, dtype=DTYPES[config.dtype])
    return PreparedAnalysis(config, languages, batches, settings, model, params, plan.store)


def analyze_languages(prepared: PreparedAnalysis) -> dict[str, CorpusRouting]:
    """Each language's summaries: loaded when stored under the same settings, else computed and stored."""
    config = prepared.config
    total = sum(key is not None for rows in prepared.batches.values() for batch in rows for key in batch.keys)
    with tqdm(total=total, desc=f"{get_suite(config.data).passages_name} routing", unit="passage",
              disable=not config.progress) as bar:
        return route_languages(prepared.model, prepared.params, prepared.batches, seed=config.seed,
                               stats_fn=statistics_fn(prepared.model, num_pairs=config.num_pairs),
                               progress=bar.update, store=prepared.store, settings=prepared.settings,
                               log=bar.write)


def execute(prepared: PreparedAnalysis) -> dict[str, Path]:
    """Analyse (or reuse) every language, then write the table, window and figures; returns their paths."""
    config, out = prepared.config, Path(prepared.config.out_dir)
    paths = {name: out / name for name in FINAL_FILES}
    for path in paths.values():
        path.unlink(missing_ok=True)
    if config.restart:
        for code in prepared.languages:
            prepared.store.remove(code)
    corpora = analyze_languages(prepared)

    moe_layers = list(prepared.model.config.moe_layers)
    reference = prepared.languages[0]
    table = routing_table(corpora, reference)
    curves = {code: np.asarray(row["divergence"], float) for code, row in table.items() if code != reference}
    raw = {code: np.asarray(row["jsd"], float) for code, row in table.items() if code != reference}
    rule = {"fraction": config.window_fraction, "margin": config.window_margin,
            "description": "valley of the mean normalised divergence curve (routing.analysis.select_middle_window)"}
    window = choose_window(curves, config.window, config.window_fraction, config.window_margin)
    mean_curve = np.mean(np.stack(list(curves.values())), axis=0)
    window_info = window_record(window, moe_layers, selected=config.window is None, rule=rule,
                                mean_curve=mean_curve)
    centre = (window.first + window.last) // 2
    heatmap_layers = sorted(set(config.heatmap_layers or (0, centre, len(moe_layers) - 1)))

    write_table_csv(paths["routing_table.csv"], table, moe_layers)
    write_json(paths["middle_window.json"], window_info)
    passages = len(corpora[reference].keys)
    caption = (f"{Path(prepared.settings[reference]['model']).name}: {get_suite(config.data).passages_title}, "
               f"{passages} passages in each of {len(corpora)} languages")
    bands = {measure: divergence_intervals(corpora, reference, normalized, seed=config.seed)
             for measure, normalized in ((NORMALISED_JSD, True), (RAW_JSD, False))}
    plot_divergence_curves({NORMALISED_JSD: curves, RAW_JSD: raw}, window, paths["divergence_by_layer.png"],
                           reference=reference, measure={NORMALISED_JSD: NORMALISED_JSD, RAW_JSD: RAW_JSD},
                           caption=caption, bands=bands)
    plot_expert_usage({code: corpus.activation_rate for code, corpus in corpora.items()}, heatmap_layers,
                      paths["expert_usage.png"], decoder_layers=moe_layers, caption=caption)
    common = {key: value for key, value in prepared.settings[reference].items() if key != "inputs_sha1"}
    write_json(paths["routing_table.json"], {
        "reference": reference, "languages": list(prepared.languages), "moe_layers": moe_layers,
        "indexing": "lists run over MoE layers (0-indexed); moe_layers[i] is the decoder layer of MoE layer i",
        "settings": common, "window": window_info, "heatmap_layers": heatmap_layers, "per_language": table},
        indent=None)
    return paths
