"""The synthetic multilingual corpus: parallel sentences and task examples, split into train and test.

Meaning ids are the alignment key: a parallel example with id i renders `Corpus.meanings[i]` in every
language, a task example with id i renders `Corpus.problems[i]`. A language given fewer training items
gets the first n ids of the shared pool, so its data stays parallel with the others'. Bitext pairs a
language's first parallel training sentences with the base language's renderings of the same meanings.
Train and test meanings are disjoint. Everything is deterministic given the seed (and the languages).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from routing.organism.synthetic.grammar import Sentence, sample_sentence
from routing.organism.synthetic.languages import Language
from routing.organism.synthetic.task import ANSWER_MARKER, Problem, render_question, sample_problem

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """One parallel sentence: `id` keys `Corpus.meanings`."""

    id: int
    lang: str
    text: str


@dataclass(frozen=True)
class TaskExample:
    """One word problem: `id` keys `Corpus.problems`; `text` is "<question> <answer> N"."""

    id: int
    lang: str
    question: str
    answer: int

    @property
    def text(self) -> str:
        return f"{self.question} {ANSWER_MARKER} {self.answer}"


@dataclass(frozen=True)
class CorpusSizes:
    """Training items per language (a language left out gets none) and test items for every language;
    `bitext_train[code]` pairs of (base, code) sentences, at most code's parallel training sentences."""

    parallel_train: Mapping[str, int] = field(default_factory=dict)
    parallel_test: int = 200
    task_train: Mapping[str, int] = field(default_factory=dict)
    task_test: int = 200
    bitext_train: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Corpus:
    """Splits by language code; `meanings` and `problems` hold the meaning of every id."""

    seed: int
    languages: Mapping[str, Language]
    meanings: Mapping[int, Sentence]
    problems: Mapping[int, Problem]
    parallel_train: Mapping[str, tuple[Example, ...]]
    parallel_test: Mapping[str, tuple[Example, ...]]
    task_train: Mapping[str, tuple[TaskExample, ...]]
    task_test: Mapping[str, tuple[TaskExample, ...]]
    bitext_train: Mapping[str, tuple[tuple[Example, Example], ...]]  # (base sentence, same meaning in code)


def _unique(sample: Callable[[random.Random], T], n: int, rng: random.Random) -> list[T]:
    out: dict[T, None] = {}  # insertion-ordered set
    for _ in range(100 * n + 1000):
        if len(out) == n:
            break
        out.setdefault(sample(rng))
    if len(out) < n:
        raise RuntimeError(f"could not draw {n} distinct meanings")
    return list(out)


def build_corpus(seed: int, sizes: CorpusSizes, languages: Mapping[str, Language], task_max_steps: int = 1
                 ) -> Corpus:
    """Sample meanings and problems with `seed` and render them in every language of `languages` (the first
    is the base); parallel and task test sets hold the same ids in every language. Problems have
    1 ... `task_max_steps` steps after their first sentence."""
    languages = dict(languages)
    base = next(iter(languages))
    if task_max_steps < 1:
        raise ValueError(f"task_max_steps must be >= 1, got {task_max_steps}")
    for name, counts in (("parallel_train", sizes.parallel_train), ("task_train", sizes.task_train),
                         ("bitext_train", sizes.bitext_train)):
        if unknown := set(counts) - set(languages):
            raise ValueError(f"{name} names unknown languages {sorted(unknown)}")
        if any(n < 0 for n in counts.values()):
            raise ValueError(f"{name} sizes must be non-negative")
    for code, n in sizes.bitext_train.items():
        if n > min(sizes.parallel_train.get(code, 0), sizes.parallel_train.get(base, 0)):
            raise ValueError(f"bitext_train[{code!r}] = {n} exceeds the parallel training sentences of "
                             f"{code} or {base}")
    rng = random.Random(seed)
    n_train = max(sizes.parallel_train.values(), default=0)
    sentences = _unique(sample_sentence, n_train + sizes.parallel_test, rng)
    n_task = max(sizes.task_train.values(), default=0)
    problems = _unique(lambda r: sample_problem(r, max_steps=task_max_steps), n_task + sizes.task_test, rng)

    def parallel(code: str, ids: range) -> tuple[Example, ...]:
        return tuple(Example(i, code, languages[code].render(sentences[i])) for i in ids)

    def task(code: str, ids: range) -> tuple[TaskExample, ...]:
        language = languages[code]
        return tuple(TaskExample(i, code, render_question(problems[i], language), problems[i].answer)
                     for i in ids)

    codes = list(languages)
    parallel_train = {c: parallel(c, range(sizes.parallel_train.get(c, 0))) for c in codes}
    return Corpus(
        seed=seed,
        languages=languages,
        meanings=dict(enumerate(sentences)),
        problems=dict(enumerate(problems)),
        parallel_train=parallel_train,
        parallel_test={c: parallel(c, range(n_train, len(sentences))) for c in codes},
        task_train={c: task(c, range(sizes.task_train.get(c, 0))) for c in codes},
        task_test={c: task(c, range(n_task, len(problems))) for c in codes},
        bitext_train={c: tuple(zip(parallel_train[base][:n], parallel_train[c][:n]))
                      for c in codes if (n := sizes.bitext_train.get(c, 0))},
    )
