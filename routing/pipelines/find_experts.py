"""Task and language experts of a model (scripts/find_experts.py): activation rates, Delta, selected sets.

Task experts: Delta = r(English task data) - r(English FLORES passages), per MoE layer and expert, from
top-k counts (``routing.stats.activation_rate``); selected inside the layer window by ``tau`` (Delta > tau)
or as the ``top_n`` largest. Task data is each task's ``experts`` data (``routing.eval.tasks``): "mgsm" uses
GSM8K train (question and worked solution as a user and an assistant turn; ``num_samples`` drawn with
``seed``), "medical" uses MedInstruct (instruction, plus its input when there is one, and the reference
answer; all 216 rows when ``num_samples`` exceeds them). Plain mode joins the two turns with a newline.
Language experts (optional): Delta = r(FLORES in language X) - r(English FLORES), selected by the same rule
in the same window. Every token counts, template included. Results are written as the expert file
(``routing.pipelines.experts_file``).

The task decides the data (``routing.data.suites``): "organism" measures the organism's base training problems
(question, then "<answer> N") against its base passages, language experts on its passages, with its codes, and
``source_dir`` is the organism folder (None: the model's folder).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from moe import ModelConfig, load_config
from moe.atomic import check_output_folder
from routing.analysis import analyze_corpus
from routing.data.chat import Turn
from routing.data.suites import DataSuite, get_suite
from routing.data.tokenize import bucket_batches, encode_conversations, encode_texts, length_buckets
from routing.eval.tasks import EXPERT_TASKS, get_task
from routing.experts import specialization
from routing.outputs.figures import plot_delta_heatmap
from routing.outputs.files import write_json
from routing.pipelines.experts_file import ExpertSets, ExpertSettings
from routing.pipelines.models import LoadedModel, check_chat_template, load_model, load_tokenizer_for
from routing.pipelines.passages import passage_batches, route_languages, routing_statistics


def check_settings(settings: ExpertSettings, config: ModelConfig) -> None:
    """Raise ValueError for anything wrong, before any data is read or weights are loaded."""
    if settings.task not in EXPERT_TASKS:
        raise ValueError(f"unknown task {settings.task!r} for expert search; choose one of {EXPERT_TASKS}")
    settings.window.check(config.num_moe_layers)
    if (settings.tau is None) == (settings.top_n is None):
        raise ValueError("give exactly one of tau and top_n")
    if settings.tau is not None and not -1 <= settings.tau < 1:
        raise ValueError(f"tau must be in [-1, 1), got {settings.tau}")
    size = len(settings.window.layers) * config.num_experts
    if settings.top_n is not None and not 1 <= settings.top_n <= size:
        raise ValueError(f"top_n must be in [1, {size}] (experts in the window), got {settings.top_n}")
    if settings.num_samples < 1 or settings.batch_size < 1 or settings.max_length < 1:
        raise ValueError("num_samples, batch_size and max_length must be >= 1")
    if settings.max_passages is not None and settings.max_passages < 1:
        raise ValueError(f"max_passages must be >= 1, got {settings.max_passages}")


@dataclasses.dataclass
class SearchData:
    """What an expert search measures: reference-language task conversations and passages per language, the
    reference's first."""

    conversations: list[list[Turn]]
    passages: dict[str, list[dict[str, Any]]]

    @property
    def reference(self) -> str:
        return next(iter(self.passages))


def task_data(task: str) -> DataSuite:
    """The data suite of ``task`` (``routing.data.suites``)."""
    return get_suite(get_task(task).data)


def with_codes(settings: ExpertSettings, source_dir: str | Path | None) -> ExpertSettings:
    """``settings`` with its languages as the task data's codes (FLORES-200 codes for the real data), without
    repeats; ValueError for unknown codes (naming close matches) or the reference among them."""
    suite = task_data(settings.task)
    languages = suite.codes(settings.languages, source_dir) if settings.languages else ()
    reference = suite.reference(source_dir)
    if reference in languages:
        raise ValueError(f"language experts are measured against {reference}; drop it from the languages")
    return dataclasses.replace(settings, languages=languages)


def load_search_data(settings: ExpertSettings, *, source_dir: str | Path | None,
                     tfds_dir: str | Path | None = None) -> SearchData:
    """The task conversations and the passages (reference and ``settings.languages``, codes as `with_codes`)."""
    conversations = get_task(settings.task).experts.conversations(settings.num_samples, settings.seed,
                                                                  source_dir=source_dir, tfds_dir=tfds_dir)
    suite = task_data(settings.task)
    passages = suite.load_passages(source_dir, (suite.reference(source_dir), *settings.languages), tfds_dir,
                                   settings.max_passages)
    return SearchData(conversations, passages)


def find_experts(loaded: LoadedModel, settings: ExpertSettings, data: SearchData,
                 progress: Callable[[int], None] | None = None) -> ExpertSets:
    """Measure activation rates on the task data and the passages, and select task (and language) experts."""
    check_settings(settings, loaded.config)
    tok, conversations = loaded.tokenizer, data.conversations
    if settings.chat:
        task_ids = encode_conversations(tok, conversations, add_generation_prompt=False,
                                        chat_template=settings.chat_template)
    else:
        task_ids = encode_texts(tok, ["\n".join(text for _, text in turns) for turns in conversations], chat=False)
    buckets = length_buckets(settings.max_length, min(32, settings.max_length))
    task_batches = bucket_batches(task_ids, list(range(len(task_ids))), pad_id=0, batch_size=settings.batch_size,
                                  buckets=buckets, truncation=settings.truncation)
    stats_fn = routing_statistics(loaded.model)
    rate_task = analyze_corpus(loaded.model, loaded.params, task_batches, seed=settings.seed, progress=progress,
                               stats_fn=stats_fn).activation_rate
    batches = passage_batches(tok, data.passages, chat=settings.chat, chat_template=settings.chat_template,
                              batch_size=settings.batch_size, max_length=settings.max_length,
                              truncation=settings.truncation)
    corpora = route_languages(loaded.model, loaded.params, batches, seed=settings.seed, stats_fn=stats_fn,
                              progress=progress)
    rate = {lang: corpus.activation_rate for lang, corpus in corpora.items()}
    reference, key = data.reference, task_data(settings.task).passages_name.lower()
    delta_task = specialization(rate_task, rate[reference])
    delta_languages = {lang: specialization(rate[lang], rate[reference]) for lang in settings.languages}
    return ExpertSets(
        settings, str(loaded.folder), loaded.config.num_moe_layers, loaded.config.num_experts,
        settings.select(delta_task), delta_task,
        {lang: settings.select(d) for lang, d in delta_languages.items()}, delta_languages,
        {"task": len(task_ids), **{f"{key}_{lang}": len(rows) for lang, rows in data.passages.items()}},
    )


def write_expert_outputs(sets: ExpertSets, out_dir: str | Path, reference: str) -> dict[str, Path]:
    """``experts.json`` (sets, settings, Delta tables) and one Delta heatmap per corpus (PNG); ``reference``: the
    language the passages of the search were compared with."""
    out = Path(out_dir)
    paths = {"experts": out / "experts.json", "delta_task": out / "delta_task.png"}
    write_json(paths["experts"], sets.to_json())
    window, model, task = sets.settings.window, Path(sets.model).name, sets.settings.task
    suite = task_data(task)
    passages, name = suite.passages_name, suite.reference_name
    count = sets.sequences[f"{passages.lower()}_{reference}"]
    plot_delta_heatmap(sets.delta_task, window, sets.task_experts, paths["delta_task"],
                       title=f"Delta: {name} {task} data vs {name} {passages}",
                       caption=f"{model}: {sets.sequences['task']} {task} sequences, {count} {passages} passages",
                       measure=f"Delta = activation rate on {task} - on {name} {passages}")
    for lang, delta in sets.delta_languages.items():
        paths[f"delta_{lang}"] = out / f"delta_{lang}.png"
        plot_delta_heatmap(delta, window, sets.language_experts[lang], paths[f"delta_{lang}"],
                           title=f"Delta: {lang} {passages} vs {name} {passages}",
                           caption=f"{model}: {sets.sequences[f'{passages.lower()}_{lang}']} {lang} and {count} "
                                   f"{name} {passages} passages",
                           measure=f"Delta = activation rate on {lang} - on {name} {passages}")
    return paths


def run_expert_search(model: str, settings: ExpertSettings, out_dir: str | Path, *,
                      source_dir: str | Path | None = None, tfds_dir: str | Path | None = None,
                      tokenizer: str | None = None, dtype: str = "float32", loaded: LoadedModel | None = None,
                      progress: bool = True) -> tuple[ExpertSets, dict[str, Path]]:
    """Check the settings, the tokenizer and the output folder against the model's config, read the data
    (``source_dir``: a folder like shared/data, None: download; the organism folder for the organism's task,
    None: the model's folder), load the model (unless ``loaded``), search (with a progress bar over every task
    sequence and passage, unless ``progress`` is False), write outputs."""
    source_dir = task_data(settings.task).data_dir(source_dir, model)
    settings = with_codes(settings, source_dir)
    if loaded is None:
        folder, config = load_config(model)
        tok = load_tokenizer_for(folder, tokenizer, config)
    else:
        config, tok = loaded.config, loaded.tokenizer
    check_settings(settings, config)
    check_output_folder(out_dir, may_exist=True)
    check_chat_template(tok, settings.chat, settings.chat_template)
    data = load_search_data(settings, source_dir=source_dir, tfds_dir=tfds_dir)
    if loaded is None:
        loaded = load_model(folder, tok, dtype)
    total = len(data.conversations) + sum(len(rows) for rows in data.passages.values())
    with tqdm(total=total, desc="expert search", unit="seq", disable=not progress) as bar:
        sets = find_experts(loaded, settings, data, progress=bar.update)
    return sets, write_expert_outputs(sets, out_dir, data.reference)
