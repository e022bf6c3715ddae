"""Task and language experts of a model (scripts/find_experts.py): activation rates, Delta, selected sets.

Task experts: Delta = r(English task data) - r(English FLORES passages), per MoE layer and expert, from
top-k counts (``routing.experts``); selected inside the layer window by ``tau`` (Delta > tau) or as the
``top_n`` largest. Task data: "mgsm" uses GSM8K train (question and worked solution as a user and an
assistant turn; ``num_samples`` drawn with ``seed``), "medical" uses MedInstruct (instruction, plus its
input when there is one, and the reference answer; all 216 rows when ``num_samples`` exceeds them).
Plain mode joins the two turns with a newline. Language experts (optional): Delta = r(FLORES in language X)
- r(English FLORES), selected by the same rule in the same window. Every token counts, template included.
Windows are MoE-layer indices, 0-indexed, inclusive at both ends.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moe.atomic import check_output_folder
from moe.config import ModelConfig
from routing.analysis import analyze_corpus
from routing.data.chat import encode_conversations
from routing.correlation import routing_statistics
from routing.data import (Gsm8k, MedInstruct, bucket_batches, encode_texts, length_buckets, read_records,
                          tokenize_records)
from routing.experts import overlap, select_experts, specialization
from routing.eval_figures import plot_delta_heatmap
from routing.model_io import LoadedModel, load_model, load_tokenizer_for, peek_config
from routing.pipeline import load_passages
from routing.store import write_json
from routing.tasks import flores_language

EXPERT_TASKS = ("mgsm", "medical")
REFERENCE = "eng_Latn"
Pair = tuple[int, int]


def check_window(window: Sequence[int], num_moe_layers: int) -> tuple[int, int]:
    """(first, last) MoE layers, 0-indexed, inclusive; ValueError if it does not lie inside the model."""
    first, last = (int(x) for x in window)
    if not 0 <= first <= last < num_moe_layers:
        raise ValueError(f"window {first}:{last} lies outside the model: need 0 <= FIRST <= LAST < "
                         f"{num_moe_layers} (MoE layers, 0-indexed, inclusive)")
    return first, last


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
    """What to measure and how to select (exactly one of ``tau`` and ``top_n``)."""

    task: str
    window: tuple[int, int]
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

    def check(self, config: ModelConfig) -> None:
        """Raise ValueError for anything wrong, before any data is read or weights are loaded."""
        if self.task not in EXPERT_TASKS:
            raise ValueError(f"unknown task {self.task!r} for expert search; choose one of {EXPERT_TASKS}")
        check_window(self.window, config.num_moe_layers)
        if (self.tau is None) == (self.top_n is None):
            raise ValueError("give exactly one of tau and top_n")
        if self.tau is not None and not -1 <= self.tau < 1:
            raise ValueError(f"tau must be in [-1, 1), got {self.tau}")
        size = (self.window[1] - self.window[0] + 1) * config.num_experts
        if self.top_n is not None and not 1 <= self.top_n <= size:
            raise ValueError(f"top_n must be in [1, {size}] (experts in the window), got {self.top_n}")
        for language in self.languages:
            if flores_language(language) == REFERENCE:
                raise ValueError(f"language experts are measured against {REFERENCE}; drop it from the languages")
        if self.num_samples < 1 or self.batch_size < 1 or self.max_length < 1:
            raise ValueError("num_samples, batch_size and max_length must be >= 1")
        if self.max_passages is not None and self.max_passages < 1:
            raise ValueError(f"max_passages must be >= 1, got {self.max_passages}")

    def select(self, delta: np.ndarray) -> list[Pair]:
        layers = range(self.window[0], self.window[1] + 1)
        return select_experts(delta, tau=self.tau, top_n=self.top_n, layers=layers)


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
        settings["window"] = tuple(settings["window"])
        settings["languages"] = tuple(settings["languages"])
        return cls(ExpertSettings(**settings), data["model"], int(data["num_moe_layers"]), int(data["num_experts"]),
                   as_pairs(data["task_experts"]), np.asarray(data["delta_task"], float),
                   {lang: as_pairs(p) for lang, p in data["language_experts"].items()},
                   {lang: np.asarray(d, float) for lang, d in data["delta_languages"].items()},
                   dict(data["sequences"]))


def task_conversations(task: str, source_dir: str | Path | None, data_dir: str | Path | None,
                       num_samples: int = 500, seed: int = 0) -> list[list[tuple[str, str]]]:
    """English task data as (user, assistant) turn pairs, ``num_samples`` drawn without replacement."""
    if task == "mgsm":
        builder, split = Gsm8k(source_dir=source_dir, data_dir=data_dir), "train"
    elif task == "medical":
        builder, split = MedInstruct(source_dir=source_dir, data_dir=data_dir), "test"
    else:
        raise ValueError(f"unknown task {task!r}; choose one of {EXPERT_TASKS}")
    builder.download_and_prepare()
    rows = read_records(builder, split)
    chosen = np.random.default_rng(seed).choice(len(rows), min(num_samples, len(rows)), replace=False)
    if task == "mgsm":
        return [[("user", rows[i]["question"]), ("assistant", rows[i]["answer"])] for i in chosen]
    return [[("user", "\n\n".join(t for t in (rows[i]["instruction"], rows[i]["input"]) if t)),
             ("assistant", rows[i]["output"])] for i in chosen]


@dataclasses.dataclass
class SearchData:
    """What an expert search measures: English task conversations and FLORES passages per language."""

    conversations: list[list[tuple[str, str]]]
    passages: dict[str, list[dict[str, Any]]]


def with_flores_codes(settings: ExpertSettings) -> ExpertSettings:
    """``settings`` with its languages as FLORES-200 codes, without repeats (ValueError for unknown codes)."""
    return dataclasses.replace(settings, languages=tuple(dict.fromkeys(map(flores_language, settings.languages))))


def load_search_data(settings: ExpertSettings, *, source_dir: str | Path | None,
                     data_dir: str | Path | None = None) -> SearchData:
    """The task conversations and the FLORES passages (English and ``settings.languages``, FLORES codes)."""
    conversations = task_conversations(settings.task, source_dir, data_dir, settings.num_samples, settings.seed)
    passages = load_passages(None if source_dir is None else Path(source_dir), (REFERENCE, *settings.languages),
                             data_dir, settings.max_passages)
    return SearchData(conversations, passages)


def find_experts(loaded: LoadedModel, settings: ExpertSettings, data: SearchData,
                 progress: Callable[[int], None] | None = None) -> ExpertSets:
    """Measure activation rates on the task data and FLORES, and select task (and language) experts."""
    settings.check(loaded.config)
    conversations, passages = data.conversations, data.passages
    tok, buckets = loaded.tokenizer, length_buckets(settings.max_length, min(32, settings.max_length))
    if settings.chat:
        task_ids = encode_conversations(tok, conversations, add_generation_prompt=False,
                                        chat_template=settings.chat_template)
    else:
        task_ids = encode_texts(tok, ["\n".join(text for _, text in turns) for turns in conversations], chat=False)
    batching = dict(batch_size=settings.batch_size, buckets=buckets, truncation=settings.truncation)
    task_batches = bucket_batches(task_ids, list(range(len(task_ids))), pad_id=0, **batching)
    stats_fn = routing_statistics(loaded.model)

    def rates(batches: list) -> np.ndarray:
        return analyze_corpus(loaded.model, loaded.params, batches, seed=settings.seed, progress=progress,
                              stats_fn=stats_fn).activation_rate

    rate_task = rates(task_batches)
    rate_flores = {lang: rates(tokenize_records(tok, records, chat=settings.chat, chat_template=settings.chat_template,
                                                key=("passage_id",), **batching))
                   for lang, records in passages.items()}
    delta_task = specialization(rate_task, rate_flores[REFERENCE])
    delta_languages = {lang: specialization(rate_flores[lang], rate_flores[REFERENCE]) for lang in settings.languages}
    return ExpertSets(
        settings, str(loaded.folder), loaded.config.num_moe_layers, loaded.config.num_experts,
        settings.select(delta_task), delta_task,
        {lang: settings.select(d) for lang, d in delta_languages.items()}, delta_languages,
        {"task": len(task_ids), **{f"flores_{lang}": len(rows) for lang, rows in passages.items()}},
    )


def write_expert_outputs(sets: ExpertSets, out_dir: str | Path) -> dict[str, Path]:
    """``experts.json`` (sets, settings, Delta tables) and one Delta heatmap per corpus (PNG)."""
    out = Path(out_dir)
    paths = {"experts": out / "experts.json", "delta_task": out / "delta_task.png"}
    write_json(paths["experts"], sets.to_json())
    window = sets.settings.window
    plot_delta_heatmap(sets.delta_task, window, sets.task_experts, paths["delta_task"],
                       title=f"Delta: English {sets.settings.task} data vs English FLORES")
    for lang, delta in sets.delta_languages.items():
        paths[f"delta_{lang}"] = out / f"delta_{lang}.png"
        plot_delta_heatmap(delta, window, sets.language_experts[lang], paths[f"delta_{lang}"],
                           title=f"Delta: {lang} FLORES vs English FLORES")
    return paths


def run_expert_search(model: str, settings: ExpertSettings, out_dir: str | Path, *,
                      source_dir: str | Path | None, data_dir: str | Path | None = None,
                      tokenizer: str | None = None, dtype: str = "float32", loaded: LoadedModel | None = None,
                      progress: Callable[[int], None] | None = None) -> tuple[ExpertSets, dict[str, Path]]:
    """Check the settings, the tokenizer and the output folder against the model's config, read the data, load
    the model (unless ``loaded``), search, write outputs."""
    settings = with_flores_codes(settings)
    if loaded is None:
        folder, config = peek_config(model)
        tok = load_tokenizer_for(folder, tokenizer, config)
    else:
        config, tok = loaded.config, loaded.tokenizer
    settings.check(config)
    check_output_folder(out_dir, may_exist=True)
    if settings.chat and settings.chat_template is None and not tok.chat_template:
        raise ValueError("the tokenizer has no chat template: pass a chat template or use plain text")
    data = load_search_data(settings, source_dir=source_dir, data_dir=data_dir)
    if loaded is None:
        loaded = load_model(folder, tok, dtype)
    sets = find_experts(loaded, settings, data, progress=progress)
    return sets, write_expert_outputs(sets, out_dir)
