"""Languages that render meanings to text, all perfectly parallel with the base language.

A `Language` is a word order, an adposition side and a table of forms per lexeme. The five languages:

- ``base``: SVO, prepositions, the English-like words of `grammar.BASE_FORMS`.
- ``relex``: a clone of base (same order, same morpheme sequence) with generated pseudo-words; its
  vocabulary is disjoint from every other language's, punctuation included, so nothing anchors it.
- ``verbfinal``: SOV (the verb ends every clause, after object and place), postpositions, no
  do-support in questions, and its own disjoint pseudo-word vocabulary (not the base words).
- ``shared``: SVO like base; a `shared_fraction` of the lexemes (drawn at random) keep their base
  words, the others get pseudo-words of its own.
- ``lowres``: built like ``relex`` (own disjoint vocabulary); the corpus gives it little data.

Generated words are a stem of CV syllables from a per-language sound inventory, plus a suffix for
marked forms (noun plural, verb third-person singular), so each language has regular morphology.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from routing.organism.synthetic.grammar import BASE_FORMS, Clause, HowMany, Meaning, NounPhrase, Place

LANGUAGE_CODES = ("base", "relex", "verbfinal", "shared", "lowres")
Morpheme = tuple[str, str]  # (lexeme key, feature)

_CONSONANTS = "bdfghjklmnprstvwz"
_VOWELS = "aeiou"
_SHORT_CATEGORIES = frozenset({"func", "prep", "conj", "aux", "punct"})
_MARKED = {"noun": "pl", "verb": "sg", "aux": "sg"}  # the feature that carries a suffix


def language_tag(code: str) -> str:
    """The tag token that names a language, e.g. "<lang:base>"."""
    return f"<lang:{code}>"


def _noun_phrase(np: NounPhrase) -> list[Morpheme]:
    if np.is_entity:
        return [(f"entity:{np.head}", "")]
    det = ("func:the", "") if np.count is None else (f"num:{np.count}", "")
    adj = [(f"adj:{np.adjective}", "")] if np.adjective else []
    return [det, *adj, (f"noun:{np.head}", "pl" if np.plural else "sg")]


def _agreement(subject: NounPhrase) -> str:
    return "pl" if subject.plural else "sg"


@dataclass(frozen=True)
class Language:
    """A renderer from meanings to space-separated words: `order` "SVO" or "SOV", `adposition`
    "pre" or "post", `forms` maps lexeme key -> feature -> word."""

    code: str
    order: str
    adposition: str
    forms: Mapping[str, Mapping[str, str]]

    @property
    def tag(self) -> str:
        return language_tag(self.code)

    def vocabulary(self) -> frozenset[str]:
        """Every word this language can produce."""
        return frozenset(w for table in self.forms.values() for w in table.values())

    def morphemes(self, meaning: Meaning) -> list[Morpheme]:
        """The meaning linearised in this language's order, as (lexeme key, feature) pairs."""
        if isinstance(meaning, HowMany):
            return self._how_many(meaning)
        out = self._clause(meaning.clauses[0])
        if meaning.connective is not None:
            out += [(f"conj:{meaning.connective}", ""), *self._clause(meaning.clauses[1])]
        return [*out, ("punct:.", "")]

    def words(self, meaning: Meaning) -> list[str]:
        return [self.forms[key][feature] for key, feature in self.morphemes(meaning)]

    def render(self, meaning: Meaning) -> str:
        return " ".join(self.words(meaning))

    def _place(self, place: Place) -> list[Morpheme]:
        noun = [("func:the", ""), (f"place:{place.place}", "")]
        adposition = (f"prep:{place.preposition}", "")
        return [adposition, *noun] if self.adposition == "pre" else [*noun, adposition]

    def _clause(self, clause: Clause) -> list[Morpheme]:
        adverb = [(f"adv:{clause.adverb}", "")] if clause.adverb else []
        verb = [(f"verb:{clause.verb}", _agreement(clause.subject))]
        obj = _noun_phrase(clause.obj) if clause.obj else []
        place = self._place(clause.place) if clause.place else []
        subject = _noun_phrase(clause.subject)
        if self.order == "SVO":
            return [*adverb, *subject, *verb, *obj, *place]
        return [*adverb, *subject, *obj, *place, *verb]

    def _how_many(self, q: HowMany) -> list[Morpheme]:
        asked = [("func:how", ""), ("func:many", ""), (f"noun:{q.item}", "pl")]
        subject = _noun_phrase(q.subject)
        if self.order == "SVO":
            return [*asked, ("aux:do", _agreement(q.subject)), *subject, ("verb:have", "pl"), ("punct:?", "")]
        return [*subject, *asked, ("verb:have", _agreement(q.subject)), ("punct:?", "")]


def _relexify(rng: random.Random, taken: set[str], keep: frozenset[str] = frozenset()) -> dict[str, dict[str, str]]:
    """Forms for every base lexeme: base words for those in `keep`, new pseudo-words for the rest.

    New words avoid everything in `taken` (and are added to it), so languages stay disjoint."""
    consonants = rng.sample(_CONSONANTS, 8)
    vowels = rng.sample(_VOWELS, 3)

    def word(syllables: int) -> str:
        return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))

    suffixes = {feature: word(1) for feature in sorted(set(_MARKED.values()))}
    forms: dict[str, dict[str, str]] = {}
    for key, base_table in BASE_FORMS.items():
        if key in keep:
            forms[key] = dict(base_table)
            continue
        category = key.split(":")[0]
        length = 1 if category in _SHORT_CATEGORIES else rng.choice((2, 2, 3))
        for attempt in range(10_000):
            stem = word(length + attempt // 100)
            table = {f: stem + (suffixes[f] if _MARKED.get(category) == f else "") for f in base_table}
            if len(set(table.values())) == len(table) and not taken.intersection(table.values()):
                break
        else:
            raise RuntimeError(f"could not find a new word for {key}")
        taken.update(table.values())
        forms[key] = table
    return forms


def make_languages(seed: int = 0, shared_fraction: float = 0.5) -> dict[str, Language]:
    """The five languages, keyed by code in `LANGUAGE_CODES` order; deterministic given the arguments."""
    if not 0.0 <= shared_fraction <= 1.0:
        raise ValueError(f"shared_fraction must be in [0, 1], got {shared_fraction}")
    rng = random.Random(seed)
    taken = {w for table in BASE_FORMS.values() for w in table.values()}
    keys = sorted(BASE_FORMS)
    relex = _relexify(rng, taken)
    verbfinal = _relexify(rng, taken)
    shared = _relexify(rng, taken, keep=frozenset(rng.sample(keys, round(shared_fraction * len(keys)))))
    lowres = _relexify(rng, taken)
    return {
        "base": Language("base", "SVO", "pre", BASE_FORMS),
        "relex": Language("relex", "SVO", "pre", relex),
        "verbfinal": Language("verbfinal", "SOV", "post", verbfinal),
        "shared": Language("shared", "SVO", "pre", shared),
        "lowres": Language("lowres", "SVO", "pre", lowres),
    }
