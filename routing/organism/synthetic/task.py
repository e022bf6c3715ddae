"""Arithmetic word problems: a task every language can express, with a checkable numeric answer.

A `Problem` is a meaning: "<person> has N <items>." then one to three steps ("<person> buys/finds/makes
M <items>." add, "sells/loses/eats" subtract), then "how many <items> does <person> have?". The numbers
in the question are the language's numerals (shared digit tokens when the spec sets `digits`); the answer is
written in decimal digits as one token shared by all languages (as MGSM answers are), so exact match is
`parse_answer(text) == answer`.
An example reads "<question> <answer> N".
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from routing.organism.synthetic.grammar import (ENTITIES, MAX_NUMBER, NOUNS, Clause, HowMany, Meaning, NounPhrase,
                                                Sentence)
from routing.organism.synthetic.languages import Language

ANSWER_MARKER = "<answer>"
GAIN_VERBS = ("buy", "find", "make")
LOSS_VERBS = ("sell", "lose", "eat")
ITEMS = tuple(n for n, (kind, _, _) in NOUNS.items() if kind in ("food", "thing"))
PEOPLE = tuple(n for n, (kind, _, _) in NOUNS.items() if kind == "person")


def answer_tokens() -> tuple[str, ...]:
    """Every answer token a problem can have: "0" ... str(MAX_NUMBER)."""
    return tuple(str(n) for n in range(MAX_NUMBER + 1))


@dataclass(frozen=True)
class Step:
    """The person gains (GAIN_VERBS) or gives up (LOSS_VERBS) `amount` items."""

    verb: str
    amount: int

    @property
    def delta(self) -> int:
        return self.amount if self.verb in GAIN_VERBS else -self.amount


@dataclass(frozen=True)
class Problem:
    """A word problem's meaning: who, which item, how many at the start, and the steps."""

    person: NounPhrase
    item: str
    start: int
    steps: tuple[Step, ...]

    @property
    def answer(self) -> int:
        return self.start + sum(step.delta for step in self.steps)

    def meanings(self) -> tuple[Meaning, ...]:
        """The problem's sentences and its closing question, in order."""
        facts = [Clause(self.person, "have", NounPhrase(self.item, self.start))]
        facts += [Clause(self.person, s.verb, NounPhrase(self.item, s.amount)) for s in self.steps]
        return (*(Sentence((c,)) for c in facts), HowMany(self.person, self.item))


def sample_problem(rng: random.Random, max_steps: int = 3, max_amount: int = 9) -> Problem:
    """A random problem whose running total stays within 0 ... MAX_NUMBER; each step moves at most
    `max_amount` items."""
    who = rng.random()
    if who < 0.6:
        person = NounPhrase(rng.choice(ENTITIES))
    else:  # "the teacher" or a group, "three teachers" (so plural agreement occurs too)
        person = NounPhrase(rng.choice(PEOPLE), None if who < 0.85 else rng.randint(2, 3))
    item = rng.choice(ITEMS)
    losses = LOSS_VERBS if NOUNS[item][0] == "food" else tuple(v for v in LOSS_VERBS if v != "eat")
    total = start = rng.randint(1, MAX_NUMBER - 1)
    steps = []
    for _ in range(rng.randint(1, max_steps)):
        gain = total == 0 or (total < MAX_NUMBER and rng.random() < 0.5)
        amount = rng.randint(1, min(max_amount, MAX_NUMBER - total if gain else total))
        steps.append(Step(rng.choice(GAIN_VERBS if gain else losses), amount))
        total += steps[-1].delta
    return Problem(person, item, start, tuple(steps))


def render_question(problem: Problem, language: Language) -> str:
    return " ".join(language.render(m) for m in problem.meanings())


def render_example(problem: Problem, language: Language) -> str:
    """The worked example "<question> <answer> N"."""
    return f"{render_question(problem, language)} {ANSWER_MARKER} {problem.answer}"


def parse_answer(text: str) -> int | None:
    """The number after the last answer marker, or None when there is none or it is not a number."""
    words = text.split()
    if ANSWER_MARKER not in words:
        return None
    after = words[len(words) - words[::-1].index(ANSWER_MARKER):]
    return int(after[0]) if after and after[0].isascii() and after[0].isdigit() else None
