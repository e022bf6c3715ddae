"""The evaluation tasks: a registry of `Task`s, the settings that decide how they run (`EvalSettings`), their
records per language (`load_task`) and one call to run them (`run_task`).

A `Task` names the TFDS builder and split of its records (``routing.data``), how they are prompted and
scored (generation with the last number of the answer scored, as MGSM, ``routing.eval.mgsm``; or multiple
choice by log-likelihood, ``routing.eval.multiple_choice``), where few-shot exemplars come from, and the
data its task experts are measured on (in the reference language), and the data suite it belongs to
(``routing.data.suites``: its language codes and passages). A new task is its builder and one entry in `TASKS`.
``source_dir`` is the suite's folder (laid out like ``shared/data``, or the organism folder), ``tfds_dir``
where TFDS keeps prepared files.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routing.data.belebele import Belebele
from routing.data.chat import DEFAULT_CHAT_DATE, ChatVariables, Turn
from routing.data.math_problems import Gsm8k, Mgsm
from routing.data.medical import MedicalMcq, MedInstruct
from routing.data.organism import OrganismMath
from routing.data.source import SourceBuilder, read_records, record_languages
from routing.data.suites import get_suite
from routing.data.tokenize import TRUNCATIONS
from routing.eval.mgsm import (ANSWER_FORMATS, DEFAULT_TEMPLATE, MgsmFormat, check_template, evaluate_mgsm,
                               gsm8k_exemplars, resolve_answer_format, split_mgsm_exemplars)
from routing.eval.multiple_choice import McFormat, evaluate_multiple_choice
from routing.eval.results import ItemResult

SHOT_SOURCES = ("gsm8k", "mgsm")
Records = list[Mapping[str, Any]]
Exemplars = dict[str, Records]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that decides how a task is run (written out with the results).

    chat/chat_template: prompts as one user turn of the chat template, or plain text.
    chat_date, reasoning_effort: what the chat template is rendered with (``routing.data.chat``): a fixed
        date (YYYY-MM-DD), so prompts do not change from day to day, and GPT-OSS's reasoning effort
        (None: the template's default).
    instruction: text put before each prompt (both tasks).
    template (mgsm): the prompt, with ``{question}``. stop (mgsm): strings the output is cut at (none by
        default: the whole answer until EOS or max_new_tokens is scored). answer_format (mgsm): "plain"
        (the whole output), "harmony" (GPT-OSS's final channel) or "auto" (decided by the chat template;
        ``resolved`` fixes it before a run, so results record the format used).
    limit: items per language (the first ``limit`` ids all chosen languages share), None for all.
    shots/shot_source (mgsm): exemplars per prompt, from GSM8K train ("gsm8k", English shots for every
        language) or MGSM itself ("mgsm", same-language shots, removed from the evaluated items).
    max_new_tokens (mgsm); options/length_normalized (multiple choice, see ``McFormat``).
    buckets: padded prompt lengths (default: powers of two up to max_length); truncation as in
        ``routing.data.tokenize.bucket_batches``.
    """

    chat: bool = False
    chat_template: str | None = None
    batch_size: int = 8
    max_length: int = 2048
    buckets: tuple[int, ...] | None = None
    truncation: str = "error"
    limit: int | None = None
    seed: int = 0
    shots: int = 0
    shot_source: str = "gsm8k"
    max_new_tokens: int = 256
    options: str = "letter"
    length_normalized: bool = False
    template: str = DEFAULT_TEMPLATE
    instruction: str = ""
    stop: tuple[str, ...] = ()
    answer_format: str = "auto"
    chat_date: str = DEFAULT_CHAT_DATE
    reasoning_effort: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.buckets is not None:
            object.__setattr__(self, "buckets", tuple(self.buckets))
        check_template(self.template)
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        ChatVariables(date=self.chat_date, reasoning_effort=self.reasoning_effort)  # validates both
        if self.shot_source not in SHOT_SOURCES:
            raise ValueError(f"shot_source must be one of {SHOT_SOURCES}, got {self.shot_source!r}")
        for name in ("batch_size", "max_length", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shots < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"need shots >= 0 and limit >= 1 (or None), got {self.shots}, {self.limit}")
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")
        if self.buckets is not None and (not self.buckets or min(self.buckets) < 2):
            raise ValueError(f"buckets must be lengths >= 2, got {self.buckets}")
        McFormat(options=self.options)  # validates the option style

    @property
    def chat_variables(self) -> ChatVariables:
        return ChatVariables(date=self.chat_date, reasoning_effort=self.reasoning_effort)

    def mgsm_format(self) -> MgsmFormat:
        return MgsmFormat(template=self.template, chat=self.chat, chat_template=self.chat_template,
                          chat_variables=self.chat_variables, instruction=self.instruction, stop=self.stop,
                          answer_format=self.answer_format)

    def mc_format(self) -> McFormat:
        return McFormat(options=self.options, chat=self.chat, chat_template=self.chat_template,
                        chat_variables=self.chat_variables, instruction=self.instruction)

    def resolved(self, tokenizer) -> "EvalSettings":
        """These settings with answer_format "auto" replaced by the format ``tokenizer``'s template implies."""
        return dataclasses.replace(self, answer_format=resolve_answer_format(self.mgsm_format(), tokenizer))


@dataclasses.dataclass
class TaskData:
    """The records to evaluate, in language order, and (mgsm) the exemplars of each language."""

    task: str  # its name in TASKS
    languages: tuple[str, ...]
    records: Records
    exemplars: Exemplars


def _prepared(builder_cls: type[SourceBuilder], source_dir: str | Path | None,
              tfds_dir: str | Path | None) -> SourceBuilder:
    builder = builder_cls(source_dir=None if source_dir is None else Path(source_dir),
                          data_dir=None if tfds_dir is None else str(tfds_dir))
    builder.download_and_prepare()
    return builder


@dataclasses.dataclass(frozen=True)
class ExpertData:
    """The reference-language data a task's experts are found with: records of one split of a builder, each
    made into a (user, assistant) conversation by ``turns``."""

    builder: type[SourceBuilder]
    split: str
    turns: Callable[[Mapping[str, Any]], list[Turn]]

    def conversations(self, num_samples: int, seed: int = 0, *, source_dir: str | Path | None,
                      tfds_dir: str | Path | None = None) -> list[list[Turn]]:
        """``num_samples`` conversations drawn without replacement (seeded; all records when there are fewer)."""
        rows = read_records(_prepared(self.builder, source_dir, tfds_dir), self.split)
        chosen = np.random.default_rng(seed).choice(len(rows), min(num_samples, len(rows)), replace=False)
        return [self.turns(rows[i]) for i in chosen]


Evaluate = Callable[..., list[ItemResult]]


@dataclasses.dataclass(frozen=True)
class Task:
    """One evaluation: its records (``builder``, ``split``), how they are prompted and scored (``evaluate``),
    where few-shot exemplars come from (``exemplars``; None: the task takes none, ``shots`` is ignored),
    the data its task experts are measured on (``experts``; None: no expert search), its data suite
    (``data``, ``routing.data.suites``), its own prompt template (``template``, see `task_settings`; None:
    ``EvalSettings.template``) and its name in figures and tables (``title``; empty: ``name``)."""

    name: str
    builder: type[SourceBuilder]
    split: str
    evaluate: Evaluate
    exemplars: Callable[..., tuple[Exemplars, Records]] | None = None
    experts: ExpertData | None = None
    data: str = "real"
    template: str | None = None
    title: str = ""

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.name)


def generation(model, params, tokenizer, data: TaskData, settings: EvalSettings, **run: Any) -> list[ItemResult]:
    """Greedy answers, scored by their last number (``routing.eval.mgsm``)."""
    return evaluate_mgsm(model, params, tokenizer, data.records, settings.mgsm_format(), exemplars=data.exemplars,
                         max_new_tokens=settings.max_new_tokens, **run)


def multiple_choice(model, params, tokenizer, data: TaskData, settings: EvalSettings, *,
                    eos_ids: set[int] | None = None, **run: Any) -> list[ItemResult]:
    """The option with the highest log-likelihood (``routing.eval.multiple_choice``; ``eos_ids`` unused)."""
    return evaluate_multiple_choice(model, params, tokenizer, data.records, settings.mc_format(),
                                    length_normalized=settings.length_normalized, **run)


def mgsm_exemplars(records: Records, languages: Sequence[str], settings: EvalSettings, *,
                   source_dir: str | Path | None, tfds_dir: str | Path | None) -> tuple[Exemplars, Records]:
    """``settings.shots`` exemplars per language and the records left to evaluate: GSM8K train problems (the
    same English shots for every language), or MGSM's own items (removed from the evaluated records)."""
    if settings.shot_source == "mgsm":
        return split_mgsm_exemplars(records, settings.shots, settings.seed)
    train = read_records(_prepared(Gsm8k, source_dir, tfds_dir), "train")
    shots = gsm8k_exemplars(train, settings.shots, settings.seed)
    return {lang: shots for lang in languages}, records


def _solution(record: Mapping[str, Any]) -> list[Turn]:
    return [("user", record["question"]), ("assistant", record["answer"])]


def _instruction(record: Mapping[str, Any]) -> list[Turn]:
    return [("user", "\n\n".join(text for text in (record["instruction"], record["input"]) if text)),
            ("assistant", record["output"])]


ORGANISM_TEMPLATE = "{question} <answer>"
"""The organism's prompt: the question and the answer marker, which the model continues with the number."""

TASKS: dict[str, Task] = {task.name: task for task in (
    Task("mgsm", Mgsm, "test", generation, exemplars=mgsm_exemplars, title="MGSM",
         experts=ExpertData(Gsm8k, "train", _solution)),  # GSM8K question and worked solution
    Task("belebele", Belebele, "test", multiple_choice, title="BELEBELE"),
    Task("medical", MedicalMcq, "test", multiple_choice,
         experts=ExpertData(MedInstruct, "test", _instruction)),  # instruction (and input), reference answer
    Task("organism", OrganismMath, "test", generation, data="organism", template=ORGANISM_TEMPLATE,
         title="organism arithmetic",
         experts=ExpertData(OrganismMath, "train", _solution)),  # base question and "<answer> N"
)}
EXPERT_TASKS = tuple(name for name, task in TASKS.items() if task.experts is not None)


def get_task(name: str) -> Task:
    """The registered task called ``name``; ValueError naming the choices otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {tuple(TASKS)}")
    return TASKS[name]


def task_settings(task: str, settings: EvalSettings) -> EvalSettings:
    """``settings`` as ``task`` runs with them: a task with its own prompt template (the organism's) gets it in
    place of the default MGSM template; ValueError for any other template given."""
    own = get_task(task).template
    if own is None or settings.template == own:
        return settings
    if settings.template != DEFAULT_TEMPLATE:
        raise ValueError(f"task {task!r} prompts with its own template {own!r}, not {settings.template!r}: "
                         "drop --template")
    return dataclasses.replace(settings, template=own)


def load_task(task: str, languages: Sequence[str], settings: EvalSettings = EvalSettings(), *,
              source_dir: str | Path | None = None, tfds_dir: str | Path | None = None) -> TaskData:
    """Records of ``task`` in ``languages``, aligned: the ids every language has (first ``limit`` of them).

    Raises ValueError for an unknown task or a language the task's data does not have (codes are read as
    the task's data suite reads them, ``routing.data.suites``).
    """
    spec = get_task(task)
    langs = get_suite(spec.data).codes(languages, source_dir)
    if not langs:
        raise ValueError("no languages given")
    builder = _prepared(spec.builder, source_dir, tfds_dir)
    have = record_languages(builder, spec.split)
    missing = [lang for lang in langs if lang not in have]
    if missing:
        raise ValueError(f"{task} has no data for {missing}; available: {have}")
    records = read_records(builder, spec.split, languages=langs)
    exemplars: Exemplars = {}
    if spec.exemplars is not None and settings.shots:
        exemplars, records = spec.exemplars(records, langs, settings, source_dir=source_dir, tfds_dir=tfds_dir)
    ids = sorted(set.intersection(*({r["id"] for r in records if r["language"] == lang} for lang in langs)))
    keep = set(ids[:settings.limit])
    by_key = {(r["language"], r["id"]): r for r in records if r["id"] in keep}
    ordered = [by_key[(lang, i)] for lang in langs for i in sorted(keep)]
    return TaskData(task, langs, ordered, exemplars)


def run_task(model, params, tokenizer, data: TaskData, settings: EvalSettings = EvalSettings(), *,
             edit=None, eos_ids: set[int] | None = None,
             progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """Evaluate every record of ``data`` (with ``edit`` applied to routing, if given), with `task_settings`."""
    settings = task_settings(data.task, settings)
    return get_task(data.task).evaluate(model, params, tokenizer, data, settings, batch_size=settings.batch_size,
                                        buckets=settings.buckets, max_length=settings.max_length,
                                        truncation=settings.truncation, edit=edit, eos_ids=eos_ids,
                                        progress=progress)
