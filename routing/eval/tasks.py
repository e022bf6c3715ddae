"""The evaluation tasks by name: their settings, their records per language, and one call to run them.

Tasks: "mgsm" (generation, ``routing.mgsm``), "belebele" and "medical" (log-likelihood multiple choice,
``routing.multiple_choice``). Records are read through the TFDS builders of ``routing.data``;
``source_dir`` is a folder laid out like ``shared/data``, ``data_dir`` where TFDS keeps prepared files.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from routing.data import DEFAULT_CHAT_DATE, Belebele, ChatVariables, Gsm8k, MedicalMcq, Mgsm, read_records
from routing.data.languages import FLORES_200_LANGUAGES, SHORT_CODES, validate_flores_languages
from routing.evaluation import ItemResult
from routing.mgsm import (ANSWER_FORMATS, DEFAULT_TEMPLATE, MgsmFormat, check_template, evaluate_mgsm,
                          gsm8k_exemplars, resolve_answer_format, split_mgsm_exemplars)
from routing.multiple_choice import McFormat, evaluate_multiple_choice

TASKS = ("mgsm", "belebele", "medical")
SHOT_SOURCES = ("gsm8k", "mgsm")
BUILDERS = {"mgsm": Mgsm, "belebele": Belebele, "medical": MedicalMcq}


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
        ``routing.data.bucket_batches``.
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
        if self.truncation not in ("error", "keep_start", "keep_end"):
            raise ValueError(f"truncation must be 'error', 'keep_start' or 'keep_end', got {self.truncation!r}")
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

    task: str
    languages: tuple[str, ...]
    records: list[Mapping[str, Any]]
    exemplars: dict[str, list[Mapping[str, Any]]]


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    return task


def flores_language(code: str) -> str:
    """A FLORES-200 code from a FLORES code or a short code (``"fr"`` -> ``"fra_Latn"``)."""
    if code in FLORES_200_LANGUAGES:
        return code
    if code in SHORT_CODES:
        return SHORT_CODES[code]
    return validate_flores_languages([code])[0]  # raises, naming close matches


def _prepared(builder_cls, source_dir: Path | None, data_dir: Path | None, **kwargs):
    builder = builder_cls(source_dir=source_dir, data_dir=None if data_dir is None else str(data_dir), **kwargs)
    builder.download_and_prepare()
    return builder


def load_task(task: str, languages: Sequence[str], settings: EvalSettings = EvalSettings(), *,
              source_dir: str | Path | None = None, data_dir: str | Path | None = None) -> TaskData:
    """Records of ``task`` in ``languages``, aligned: the ids every language has (first ``limit`` of them).

    Raises ValueError for an unknown task or a language the task's data does not have.
    """
    check_task(task)
    langs = tuple(dict.fromkeys(flores_language(code) for code in languages))
    if not langs:
        raise ValueError("no languages given")
    source = None if source_dir is None else Path(source_dir)
    records = read_records(_prepared(BUILDERS[task], source, data_dir), "test")
    have = sorted({r["language"] for r in records})
    missing = [lang for lang in langs if lang not in have]
    if missing:
        raise ValueError(f"{task} has no data for {missing}; available: {have}")
    records = [r for r in records if r["language"] in langs]
    exemplars: dict[str, list] = {}
    if task == "mgsm" and settings.shots:
        if settings.shot_source == "mgsm":
            exemplars, records = split_mgsm_exemplars(records, settings.shots, settings.seed)
        else:
            train = read_records(_prepared(Gsm8k, source, data_dir), "train")
            shots = gsm8k_exemplars(train, settings.shots, settings.seed)
            exemplars = {lang: shots for lang in langs}
    ids = sorted(set.intersection(*({r["id"] for r in records if r["language"] == lang} for lang in langs)))
    keep = set(ids[:settings.limit])
    by_key = {(r["language"], r["id"]): r for r in records if r["id"] in keep}
    ordered = [by_key[(lang, i)] for lang in langs for i in sorted(keep)]
    return TaskData(task, langs, ordered, exemplars)


def run_task(model, params, tokenizer, data: TaskData, settings: EvalSettings = EvalSettings(), *,
             edit=None, eos_ids: set[int] | None = None,
             progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """Evaluate every record of ``data`` (with ``edit`` applied to routing, if given)."""
    common = dict(batch_size=settings.batch_size, buckets=settings.buckets, max_length=settings.max_length,
                  truncation=settings.truncation, edit=edit, progress=progress)
    if data.task == "mgsm":
        return evaluate_mgsm(model, params, tokenizer, data.records, settings.mgsm_format(), exemplars=data.exemplars,
                             eos_ids=eos_ids, max_new_tokens=settings.max_new_tokens, **common)
    return evaluate_multiple_choice(model, params, tokenizer, data.records, settings.mc_format(),
                                    length_normalized=settings.length_normalized, **common)
