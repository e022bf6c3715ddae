"""The base language: its lexicon (English-like words), meaning representations and a seeded sampler.

A meaning is a frozen dataclass tree (`Sentence` of `Clause`s, or a `HowMany` question) that names
lexemes, never surface words; `languages.py` turns meanings into text. Every lexeme has a key
"<category>:<name>" and a table of forms by feature ("" uninflected, "sg"/"pl" for nouns and verbs).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

MAX_NUMBER = 20
NUMERALS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
            "twenty")

ENTITIES = ("ana", "ben", "carla", "david", "elena", "farid", "grace", "hugo", "ines", "jamal", "kira", "leo")
NOUNS: dict[str, tuple[str, str, str]] = {  # name -> (kind, singular, plural)
    "child": ("person", "child", "children"), "teacher": ("person", "teacher", "teachers"),
    "farmer": ("person", "farmer", "farmers"), "doctor": ("person", "doctor", "doctors"),
    "cat": ("animal", "cat", "cats"), "dog": ("animal", "dog", "dogs"),
    "bird": ("animal", "bird", "birds"), "horse": ("animal", "horse", "horses"),
    "apple": ("food", "apple", "apples"), "egg": ("food", "egg", "eggs"),
    "cake": ("food", "cake", "cakes"), "banana": ("food", "banana", "bananas"),
    "book": ("thing", "book", "books"), "pen": ("thing", "pen", "pens"),
    "ball": ("thing", "ball", "balls"), "coin": ("thing", "coin", "coins"),
    "box": ("thing", "box", "boxes"), "cup": ("thing", "cup", "cups"),
}
ANIMATE = ("person", "animal")
OWNABLE = ("animal", "food", "thing")
VERBS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    # name -> (3rd singular, plural, subject kinds, object kinds; () for intransitive)
    "have": ("has", "have", ANIMATE, OWNABLE),
    "see": ("sees", "see", ANIMATE, ("person", *OWNABLE)),
    "like": ("likes", "like", ANIMATE, ("person", *OWNABLE)),
    "buy": ("buys", "buy", ("person",), OWNABLE),
    "sell": ("sells", "sell", ("person",), OWNABLE),
    "find": ("finds", "find", ANIMATE, ("food", "thing")),
    "lose": ("loses", "lose", ("person",), OWNABLE),
    "eat": ("eats", "eat", ANIMATE, ("food",)),
    "carry": ("carries", "carry", ANIMATE, ("food", "thing")),
    "make": ("makes", "make", ("person",), ("food", "thing")),
    "sleep": ("sleeps", "sleep", ANIMATE, ()),
    "run": ("runs", "run", ANIMATE, ()),
}
ADJECTIVES: dict[str, tuple[str, ...]] = {  # name -> noun kinds it modifies
    "big": OWNABLE, "small": OWNABLE, "red": ("food", "thing"), "blue": ("thing",), "sweet": ("food",),
    "new": ("thing",), "old": ("person", *OWNABLE), "young": ANIMATE, "happy": ANIMATE,
}
PLACES = ("garden", "market", "school", "house", "park", "river", "kitchen", "forest")
PREPOSITIONS = ("in", "near", "behind")
ADVERBS = ("today", "now", "often", "again", "sometimes")
CONNECTIVES = ("and", "but", "because")


def _build_forms() -> dict[str, dict[str, str]]:
    forms: dict[str, dict[str, str]] = {}
    forms.update({f"entity:{e}": {"": e} for e in ENTITIES})
    forms.update({f"noun:{n}": {"sg": sg, "pl": pl} for n, (_, sg, pl) in NOUNS.items()})
    forms.update({f"verb:{v}": {"sg": sg, "pl": pl} for v, (sg, pl, _, _) in VERBS.items()})
    forms.update({f"adj:{a}": {"": a} for a in ADJECTIVES})
    forms.update({f"num:{i}": {"": w} for i, w in enumerate(NUMERALS, start=1)})
    forms.update({f"place:{p}": {"": p} for p in PLACES})
    forms.update({f"prep:{p}": {"": p} for p in PREPOSITIONS})
    forms.update({f"adv:{a}": {"": a} for a in ADVERBS})
    forms.update({f"conj:{c}": {"": c} for c in CONNECTIVES})
    forms.update({f"func:{w}": {"": w} for w in ("the", "how", "many")})
    forms["aux:do"] = {"sg": "does", "pl": "do"}
    forms["punct:."] = {"": "."}
    forms["punct:?"] = {"": "?"}
    return forms


BASE_FORMS: dict[str, dict[str, str]] = _build_forms()
"""Lexeme key -> feature -> base-language word; the lexicon every language relexifies."""


@dataclass(frozen=True)
class NounPhrase:
    """An entity (`head` in ENTITIES) or a noun; `count` None means definite singular ("the")."""

    head: str
    count: int | None = None
    adjective: str | None = None

    @property
    def is_entity(self) -> bool:
        return self.head in ENTITIES

    @property
    def kind(self) -> str:
        return "person" if self.is_entity else NOUNS[self.head][0]

    @property
    def plural(self) -> bool:
        return self.count is not None and self.count > 1


@dataclass(frozen=True)
class Place:
    """A locative modifier: a preposition (or postposition) with a definite place noun."""

    preposition: str
    place: str


@dataclass(frozen=True)
class Clause:
    """Subject, verb (present tense, agreeing with the subject), optional object, place and adverb."""

    subject: NounPhrase
    verb: str
    obj: NounPhrase | None = None
    place: Place | None = None
    adverb: str | None = None


@dataclass(frozen=True)
class Sentence:
    """One clause, or two joined by a connective."""

    clauses: tuple[Clause, ...]
    connective: str | None = None

    def __post_init__(self) -> None:
        if len(self.clauses) not in (1, 2) or (self.connective is None) != (len(self.clauses) == 1):
            raise ValueError("a sentence is one clause, or two clauses with a connective")


@dataclass(frozen=True)
class HowMany:
    """The question "how many <item>s does <subject> have?"."""

    subject: NounPhrase
    item: str


Meaning = Sentence | HowMany


def _noun_phrase(rng: random.Random, kinds: tuple[str, ...], entity_rate: float = 0.5) -> NounPhrase:
    if "person" in kinds and rng.random() < entity_rate:
        return NounPhrase(rng.choice(ENTITIES))
    head = rng.choice([n for n, (kind, _, _) in NOUNS.items() if kind in kinds])
    count = None if rng.random() < 0.4 else rng.randint(1, MAX_NUMBER)
    kind = NOUNS[head][0]
    adjective = rng.choice([a for a, ks in ADJECTIVES.items() if kind in ks]) if rng.random() < 0.3 else None
    return NounPhrase(head, count, adjective)


def sample_clause(rng: random.Random) -> Clause:
    """A random well-formed clause (verbs pick subjects and objects of fitting kinds)."""
    verb = rng.choice(list(VERBS))
    _, _, subject_kinds, object_kinds = VERBS[verb]
    subject = _noun_phrase(rng, subject_kinds)
    obj = _noun_phrase(rng, object_kinds, entity_rate=0.3) if object_kinds else None
    place = Place(rng.choice(PREPOSITIONS), rng.choice(PLACES)) if rng.random() < 0.4 else None
    adverb = rng.choice(ADVERBS) if rng.random() < 0.3 else None
    return Clause(subject, verb, obj, place, adverb)


def sample_sentence(rng: random.Random) -> Sentence:
    """A random sentence: one clause (75%) or two joined by a connective."""
    if rng.random() < 0.75:
        return Sentence((sample_clause(rng),))
    return Sentence((sample_clause(rng), sample_clause(rng)), rng.choice(CONNECTIVES))
