"""Routing analysis of parallel FLORES passages, language by language and resumable (scripts/analyze_routing.py).

`prepare` checks every input and fails before any heavy work (unknown language codes with close matches,
missing data files, a path that is not a model, an empty selection, stored results computed under other
settings); `execute` analyses the languages not already stored and writes, in ``out_dir``:

- ``languages/{code}.npz``: per-passage summaries of each language (`routing.store.LanguageStore`), saved
  atomically as each language completes, tagged with the settings they were computed under;
- ``routing_table.csv`` and ``routing_table.json``: per-layer, per-language divergence from the reference,
  raw JSD, routing entropy, consistency (JSON also: activation rates, settings, window);
- ``middle_window.json``: the window (`routing.report.window_record`; 0-indexed, inclusive);
- ``divergence_by_layer.png`` and ``expert_usage.png``.

The final files are removed when a run starts and written only once every language is done, the JSON table
last, so an interrupted run never leaves results that look complete.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import moe
from moe.atomic import check_output_folder
from moe.config import ModelConfig
from moe.convert import CONFIG_FILE
from routing import figures, report
from routing.analysis import CorpusRouting, analyze_corpus, select_middle_window, statistics_fn
from routing.cache import content_key
from routing.data import (PAPER_LANGUAGES, Flores200, TokenBatch, flores_languages, length_buckets, load_tokenizer,
                          read_records, tokenize_records, validate_flores_languages)
from routing.model_io import check_vocabulary, peek_config
from routing.store import LanguageStore, StaleResultError, write_json

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
FINAL_FILES = ("routing_table.json", "routing_table.csv", "middle_window.json", "divergence_by_layer.png",
               "expert_usage.png")


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """What to analyse and how. `languages` None: the paper's languages present in `data_dir`; the reference
    is always included. `tokenizer` None: the model folder's. `chat_template`: Jinja text replacing the
    tokenizer's. `window` "A:B" overrides the selected window; `heatmap_layers` None: first, window centre, last.
    """

    model: str
    data_dir: Path
    out_dir: Path
    languages: Sequence[str] | None = None
    reference: str = "eng_Latn"
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
    heatmap_layers: Sequence[int] | None = None
    tfds_dir: Path | None = None
    restart: bool = False
    progress: bool = True


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


def choose_languages(requested: Sequence[str] | None, reference: str, data_dir: Path) -> tuple[str, ...]:
    """The reference first, then the requested (or present paper) languages; checks codes and data files."""
    flores = data_dir / "flores200"
    validate_flores_languages([reference])
    if requested is None:
        present = set(flores_languages(flores)) if (flores / "devtest").is_dir() else set()
        requested = [code for code in PAPER_LANGUAGES if code in present]
        if not requested:
            raise FileNotFoundError(f"none of the paper's languages has a devtest file in {flores / 'devtest'}")
    chosen = (reference, *(code for code in validate_flores_languages(requested) if code != reference))
    if len(chosen) < 2:
        raise ValueError(f"empty selection: no language besides the reference {reference}")
    needed = [flores / "metadata_devtest.tsv", *(flores / "devtest" / f"{code}.devtest" for code in chosen)]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"data folder {data_dir} lacks FLORES-200 files (expected a layout like "
                                f"shared/data): {', '.join(missing)}")
    return chosen


def model_fingerprint(folder: Path) -> str:
    """A content key (`routing.cache.content_key`) of every file in the model folder, weights included, so
    other weights never reuse stored results; hidden files and folders (download caches, locks) are left
    out. FileNotFoundError if the folder holds no model."""
    if not any((folder / name).is_file() for name in ("config.json", CONFIG_FILE)):
        raise FileNotFoundError(f"{folder}: not a model folder (no config.json or {CONFIG_FILE})")
    files = {str(path.relative_to(folder)): path for path in folder.rglob("*") if path.is_file()}
    return content_key({name: path for name, path in files.items() if not any(
        part.startswith(".") for part in Path(name).parts)})


def load_passages(data_dir: Path | None, languages: Sequence[str], tfds_dir: Path | None,
                  max_passages: int | None) -> dict[str, list[dict[str, Any]]]:
    """FLORES passages per language (the first `max_passages` by passage id), prepared through TFDS from
    `data_dir` (a folder like shared/data; None: downloaded from the FLORES source)."""
    builder = Flores200(languages=languages, source_dir=data_dir, data_dir=tfds_dir)
    builder.download_and_prepare()
    passages: dict[str, list[dict[str, Any]]] = {code: [] for code in languages}
    for record in read_records(builder, "devtest"):
        passages[record["language"]].append(record)
    return {code: sorted(rows, key=lambda r: r["passage_id"])[:max_passages] for code, rows in passages.items()}


def inputs_digest(batches: Sequence[TokenBatch]) -> str:
    """A digest of token batches (ids, masks, keys): equal digests mean identical model inputs."""
    digest = hashlib.sha1()
    for batch in batches:
        digest.update(batch.input_ids.tobytes() + batch.attention_mask.tobytes() + repr(batch.keys).encode())
    return digest.hexdigest()


def tokenize_passages(config: AnalysisConfig, folder: Path, model_config: ModelConfig,
                      passages: dict[str, list[dict[str, Any]]]) -> dict[str, list[TokenBatch]]:
    """Bucketed token batches per language with the chosen tokenizer (checked against the model's vocabulary)
    and chat/plain mode."""
    source = Path(config.tokenizer) if config.tokenizer else folder
    if source.is_dir() and not any((source / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {source}; pass --tokenizer")
    tokenizer = load_tokenizer(source)
    check_vocabulary(tokenizer, model_config, source)
    if config.chat and config.chat_template is None and not tokenizer.chat_template:
        raise ValueError(f"the tokenizer from {source} has no chat template: pass --chat-template FILE or --plain")
    buckets = length_buckets(config.max_length, min(32, config.max_length))
    batches = {}
    for code, records in passages.items():
        try:
            batches[code] = tokenize_records(tokenizer, records, chat=config.chat, batch_size=config.batch_size,
                                             buckets=buckets, key=("passage_id",), truncation=config.truncation,
                                             chat_template=config.chat_template)
        except ValueError as err:
            raise ValueError(f"{code}: {err} (see --max-length and --truncate)") from err
    return batches


def prepare(config: AnalysisConfig) -> PreparedAnalysis:
    """Check every input, read and tokenize the passages, then load the model; no results are touched."""
    for name in ("batch_size", "max_length", "num_pairs"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.max_passages is not None and config.max_passages < 1:
        raise ValueError(f"empty selection: max_passages must be >= 1, got {config.max_passages}")
    if not 0 <= config.window_fraction <= 1 or config.window_margin < 0:
        raise ValueError(f"window fraction must be in [0, 1] and margin >= 0, got {config.window_fraction}, "
                         f"{config.window_margin}")
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    languages = choose_languages(config.languages, config.reference, Path(config.data_dir))
    check_output_folder(config.out_dir, may_exist=True)
    folder, model_config = peek_config(config.model)
    num_layers = model_config.num_moe_layers
    if config.window is not None:
        report.parse_window(config.window, num_layers)
    bad_layers = [layer for layer in config.heatmap_layers or () if not 0 <= layer < num_layers]
    if bad_layers:
        raise ValueError(f"heatmap layers {bad_layers} are not MoE-layer indices in [0, {num_layers})")
    fingerprint = model_fingerprint(folder)
    passages = load_passages(Path(config.data_dir), languages, config.tfds_dir, config.max_passages)
    empty = [code for code, rows in passages.items() if not rows]
    if empty:
        raise ValueError(f"empty selection: no passages for {', '.join(empty)}")
    batches = tokenize_passages(config, folder, model_config, passages)
    common = {"model": str(folder.resolve()), "model_fingerprint": fingerprint, "dtype": config.dtype,
              "tokenizer": str(Path(config.tokenizer).resolve()) if config.tokenizer else None,
              "chat": config.chat, "max_passages": config.max_passages, "max_length": config.max_length,
              "truncation": config.truncation, "batch_size": config.batch_size, "num_pairs": config.num_pairs,
              "seed": config.seed}
    settings = {code: {**common, "inputs_sha1": inputs_digest(batches[code])} for code in languages}
    store = LanguageStore(Path(config.out_dir) / "languages")
    if not config.restart:
        stale = []
        for code in languages:
            try:
                store.check(code, settings[code])
            except StaleResultError as err:
                stale.append(str(err))
        if stale:
            raise StaleResultError("stored results do not match this run; pass --restart to recompute them or "
                                   "choose another --out:\n  " + "\n  ".join(stale))
    model, params = moe.from_pretrained(folder, dtype=DTYPES[config.dtype])
    return PreparedAnalysis(config, languages, batches, settings, model, params, store)


def analyze_languages(prepared: PreparedAnalysis) -> dict[str, CorpusRouting]:
    """Each language's summaries: loaded when stored under the same settings, else computed and stored."""
    config, store = prepared.config, prepared.store
    counts = {code: sum(k is not None for b in rows for k in b.keys) for code, rows in prepared.batches.items()}
    stats_fn = statistics_fn(prepared.model, num_pairs=config.num_pairs)
    corpora = {}
    with tqdm(total=sum(counts.values()), unit="passage", disable=not config.progress) as bar:
        for code in prepared.languages:
            bar.set_description(code)
            if store.check(code, prepared.settings[code]):
                corpora[code] = store.load(code)
                bar.update(counts[code])
                bar.write(f"{code}: reused {store.path(code)}")
                continue
            corpus = analyze_corpus(prepared.model, prepared.params, prepared.batches[code], seed=config.seed,
                                    num_pairs=config.num_pairs, progress=bar.update, stats_fn=stats_fn)
            store.save(code, corpus, prepared.settings[code])
            corpora[code] = corpus
            bar.write(f"{code}: computed {counts[code]} passages -> {store.path(code)}")
    return corpora


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
    table = report.routing_table(corpora, reference)
    curves = {code: np.asarray(row["divergence"], float) for code, row in table.items() if code != reference}
    raw = {code: np.asarray(row["jsd"], float) for code, row in table.items() if code != reference}
    rule = {"fraction": config.window_fraction, "margin": config.window_margin,
            "description": "valley of the mean normalised divergence curve (routing.analysis.select_middle_window)"}
    if config.window is None:
        window = select_middle_window(curves, config.window_fraction, config.window_margin)
    else:
        window = report.parse_window(config.window, len(moe_layers))
    mean_curve = np.mean(np.stack(list(curves.values())), axis=0)
    window_info = report.window_record(window, moe_layers, selected=config.window is None, rule=rule,
                                       mean_curve=mean_curve)
    heatmap_layers = sorted(set(config.heatmap_layers or (0, (window[0] + window[1]) // 2, len(moe_layers) - 1)))

    report.write_table_csv(paths["routing_table.csv"], table, moe_layers)
    write_json(paths["middle_window.json"], window_info)
    figures.plot_divergence_curves({"normalised divergence": curves, "raw JSD": raw}, window,
                                   paths["divergence_by_layer.png"], reference=reference)
    figures.plot_expert_usage({code: corpus.activation_rate for code, corpus in corpora.items()}, heatmap_layers,
                              paths["expert_usage.png"], decoder_layers=moe_layers)
    common = {key: value for key, value in prepared.settings[reference].items() if key != "inputs_sha1"}
    write_json(paths["routing_table.json"], {
        "reference": reference, "languages": list(prepared.languages), "moe_layers": moe_layers,
        "indexing": "lists run over MoE layers (0-indexed); moe_layers[i] is the decoder layer of MoE layer i",
        "settings": common, "window": window_info, "heatmap_layers": heatmap_layers, "per_language": table},
        indent=None)
    return paths
