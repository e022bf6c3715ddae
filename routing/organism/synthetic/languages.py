"""Languages that render meanings to text, all perfectly parallel with the base language.

A language is data (`LanguageSpec`): a clause order ("SVO", "SOV" or "VSO"), an adposition side, an adjective
side and the fraction of the base lexicon it keeps (`shared`); every other lexeme gets a generated pseudo-word
of its own. The kept lexemes are the first ``round(shared * n)`` of one seeded permutation of the lexicon, so
a language sharing less keeps a subset of what one sharing more keeps (25% within 50% within 75%).
Generated words are disjoint from every other language's words. With ``digits`` numerals are the shared digit
tokens "1" ... "20" in every language (anchors, like digits across scripts); they are not counted in `shared`.

Generated words are a stem of CV syllables from a per-language sound inventory, plus a suffix for marked forms
(noun plural, verb third-person singular), so each language has regular morphology.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from routing.organism.synthetic.grammar import BASE_FORMS, Clause, HowMany, Meaning, NounPhrase, Place

ORDERS = ("SVO", "SOV", "VSO")
SIDES = ("pre", "post")
Morpheme = tuple[str, str]  # (lexeme key, feature)

_CONSONANTS = "bdfghjklmnprstvwz"
_VOWELS = "aeiou"
_SHORT_CATEGORIES = frozenset({"func", "prep", "conj", "aux", "punct"})
_MARKED = {"noun": "pl", "verb": "sg", "aux": "sg"}  # the feature that carries a suffix
NUMERAL_KEYS = tuple(k for k in BASE_FORMS if k.startswith("num:"))


@dataclass(frozen=True)
class LanguageSpec:
    """How a language differs from the base: clause order, adposition and adjective sides, shared lexicon."""

    code: str
    order: str = "SVO"
    adposition: str = "pre"
    adjective: str = "pre"
    shared: float = 0.0

    def __post_init__(self) -> None:
        if not self.code or self.code.split() != [self.code]:
            raise ValueError(f"language code must be a non-empty word, got {self.code!r}")
        if self.order not in ORDERS:
            raise ValueError(f"{self.code}: order must be one of {ORDERS}, got {self.order!r}")
        for name in ("adposition", "adjective"):
            if getattr(self, name) not in SIDES:
                raise ValueError(f"{self.code}: {name} must be one of {SIDES}, got {getattr(self, name)!r}")
        if isinstance(self.shared, bool) or not 0.0 <= self.shared <= 1.0:
            raise ValueError(f"{self.code}: shared must be a fraction in [0, 1], got {self.shared!r}")


def _noun_phrase(np: NounPhrase, adjective_side: str) -> list[Morpheme]:
    if np.is_entity:
        return [(f"entity:{np.head}", "")]
    det = ("func:the", "") if np.count is None else (f"num:{np.count}", "")
    adj = [(f"adj:{np.adjective}", "")] if np.adjective else []
    noun = [(f"noun:{np.head}", "pl" if np.plural else "sg")]
    return [det, *adj, *noun] if adjective_side == "pre" else [det, *noun, *adj]


def _agreement(subject: NounPhrase) -> str:
    return "pl" if subject.plural else "sg"


@dataclass(frozen=True)
class Language:
    """A renderer from meanings to space-separated words: `spec` gives the orders, `forms` maps lexeme key ->
    feature -> word."""

    spec: LanguageSpec
    forms: Mapping[str, Mapping[str, str]]

    @property
    def code(self) -> str:
        return self.spec.code

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
        return [adposition, *noun] if self.spec.adposition == "pre" else [*noun, adposition]

    def _clause(self, clause: Clause) -> list[Morpheme]:
        adverb = [(f"adv:{clause.adverb}", "")] if clause.adverb else []
        verb = [(f"verb:{clause.verb}", _agreement(clause.subject))]
        obj = _noun_phrase(clause.obj, self.spec.adjective) if clause.obj else []
        place = self._place(clause.place) if clause.place else []
        subject = _noun_phrase(clause.subject, self.spec.adjective)
        if self.spec.order == "SVO":
            return [*adverb, *subject, *verb, *obj, *place]
        if self.spec.order == "VSO":
            return [*adverb, *verb, *subject, *obj, *place]
        return [*adverb, *subject, *obj, *place, *verb]

    def _how_many(self, q: HowMany) -> list[Morpheme]:
        asked = [("func:how", ""), ("func:many", ""), (f"noun:{q.item}", "pl")]
        subject = _noun_phrase(q.subject, self.spec.adjective)
        if self.spec.order == "SVO":
            return [*asked, ("aux:do", _agreement(q.subject)), *subject, ("verb:have", "pl"), ("punct:?", "")]
        if self.spec.order == "VSO":
            return [*asked, ("verb:have", _agreement(q.subject)), *subject, ("punct:?", "")]
        return [*subject, *asked, ("verb:have", _agreement(q.subject)), ("punct:?", "")]


def _relexify(rng: random.Random, taken: set[str], keep: frozenset[str],
              fixed: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """Forms for every base lexeme: `fixed` tables, base words for those in `keep`, new pseudo-words for the
    rest. New words avoid everything in `taken` (and are added to it), so languages stay disjoint."""
    consonants = rng.sample(_CONSONANTS, 8)
    vowels = rng.sample(_VOWELS, 3)

    def word(syllables: int) -> str:
        return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))

    suffixes = {feature: word(1) for feature in sorted(set(_MARKED.values()))}
    forms: dict[str, dict[str, str]] = {}
    for key, base_table in BASE_FORMS.items():
        if key in fixed or key in keep:
            forms[key] = dict(fixed.get(key, base_table))
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


def make_languages(seed: int, specs: Sequence[LanguageSpec], digits: bool = True) -> dict[str, Language]:
    """The languages of `specs` (the first is the base: SVO, prepositions, adjectives first, all base words),
    keyed by code in spec order; deterministic given the arguments."""
    if not specs:
        raise ValueError("need at least the base language")
    codes = [s.code for s in specs]
    if len(set(codes)) != len(codes):
        raise ValueError(f"language codes must be distinct, got {codes}")
    base = specs[0]
    if (base.order, base.adposition, base.adjective, base.shared) != ("SVO", "pre", "pre", 1.0):
        raise ValueError(f"the first language ({base.code}) is the base: SVO, pre, pre, shared 1.0")
    fixed = {k: {"": str(i)} for i, k in enumerate(NUMERAL_KEYS, start=1)} if digits else {}
    lexemes = sorted(set(BASE_FORMS) - set(fixed))
    random.Random(f"{seed}:shared").shuffle(lexemes)
    taken = {w for table in BASE_FORMS.values() for w in table.values()}
    taken |= {w for table in fixed.values() for w in table.values()}
    languages = {}
    for spec in specs:
        keep = frozenset(lexemes[:round(spec.shared * len(lexemes))])
        forms = _relexify(random.Random(f"{seed}:{spec.code}"), taken, keep, fixed)
        languages[spec.code] = Language(spec, forms)
    return languages
