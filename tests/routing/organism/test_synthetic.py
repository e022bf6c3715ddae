"""The synthetic corpus: parallelism, determinism, the graded languages, task answers, the tokenizer, the spec."""
import copy
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.organism.synthetic import (ANSWER_MARKER, DEFAULT_SPEC, Tokenizer, build_from_spec, build_tokenizer,
                                        default_spec, parse_answer)
from routing.organism.synthetic.grammar import BASE_FORMS, HowMany, sample_sentence
from routing.organism.synthetic.languages import NUMERAL_KEYS
from routing.organism.synthetic.task import sample_problem


def small_spec(seed: int = 0) -> dict:
    """The default languages with few items: parallel 60 (lowres 7), bitext 5, task 40 (base) / 3 / 0."""
    spec = default_spec(seed)
    spec.update(parallel_test=20, task_test=15)
    for entry in spec["languages"]:
        entry.update(parallel_train=7 if entry["code"] == "lowres" else 60, bitext_train=0 if entry["code"] == "base" else 5,
                     task_train=40 if entry["code"] == "base" else (3 if entry["code"] == "shared75" else 0))
    return spec


SPEC = small_spec()
LANGS = build_from_spec(SPEC).languages
seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(scope="module")
def corpus():
    return build_from_spec(SPEC)


def test_splits_are_parallel_and_rendered_from_their_meanings(corpus):
    for split in (corpus.parallel_test, corpus.task_test):
        ids = {code: [e.id for e in examples] for code, examples in split.items()}
        assert len({tuple(v) for v in ids.values()}) == 1 and ids["base"]
    base_answers = {e.id: e.answer for e in corpus.task_test["base"]}
    for code, language in corpus.languages.items():
        for example in corpus.parallel_train[code] + corpus.parallel_test[code]:
            assert example.text == language.render(corpus.meanings[example.id])
        for example in corpus.task_test[code]:
            assert example.answer == base_answers[example.id] == corpus.problems[example.id].answer
    train_ids = {e.id for e in corpus.parallel_train["base"]}
    assert train_ids.isdisjoint(e.id for e in corpus.parallel_test["base"])
    train_meanings = {corpus.meanings[i] for i in train_ids}
    assert all(corpus.meanings[e.id] not in train_meanings for e in corpus.parallel_test["base"])
    train_problems = {corpus.problems[e.id] for e in corpus.task_train["base"]}
    assert all(corpus.problems[e.id] not in train_problems for e in corpus.task_test["base"])


def test_training_sizes_and_bitext_per_language(corpus):
    for entry in SPEC["languages"]:
        code = entry["code"]
        assert len(corpus.parallel_train[code]) == entry["parallel_train"]
        assert len(corpus.task_train[code]) == entry["task_train"]
        assert len(corpus.parallel_test[code]) == SPEC["parallel_test"]
        assert len(corpus.task_test[code]) == SPEC["task_test"]
        pairs = corpus.bitext_train.get(code, ())
        assert len(pairs) == entry["bitext_train"]
        for base, other in pairs:
            assert (base.lang, other.lang, base.id) == ("base", code, other.id)
            assert base.text == corpus.parallel_train["base"][base.id].text
            assert other.text == corpus.parallel_train[code][other.id].text
    assert [e.id for e in corpus.parallel_train["lowres"]] == list(range(7))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("seed"), r"spec lacks \['seed'\]"),
    (lambda s: s.update(colour=1), r"unknown keys \['colour'\]"),
    (lambda s: s.update(task_test=0), "task_test must be an integer >= 1"),
    (lambda s: s.update(digits="yes"), "digits must be true or false"),
    (lambda s: s.update(languages=[]), "non-empty list"),
    (lambda s: s["languages"][1].pop("order"), r"languages\[1\] lacks \['order'\]"),
    (lambda s: s["languages"][1].update(order="OVS"), "order must be one of"),
    (lambda s: s["languages"][1].update(adjective="middle"), "adjective must be one of"),
    (lambda s: s["languages"][1].update(shared=1.5), "shared must be a fraction"),
    (lambda s: s["languages"][1].update(task_train=-1), "task_train must be an integer >= 0"),
    (lambda s: s["languages"][1].update(bitext_train=61), "exceeds the parallel training sentences"),
    (lambda s: s["languages"][2].update(code="shared75"), "codes must be distinct"),
    (lambda s: s["languages"][0].update(order="SOV"), "is the base"),
])
def test_bad_specs_are_named(edit, message):
    spec = copy.deepcopy(SPEC)
    edit(spec)
    with pytest.raises(ValueError, match=message):
        build_from_spec(spec)


def test_determinism():
    assert build_from_spec(small_spec(5)) == build_from_spec(small_spec(5))
    other = build_from_spec(small_spec(6))
    assert other.parallel_train != build_from_spec(small_spec(5)).parallel_train
    assert other.languages["clone"].forms != LANGS["clone"].forms
    assert DEFAULT_SPEC == default_spec(0) and default_spec(3)["seed"] == 3


def test_default_spec_has_graded_languages_and_large_test_sets():
    entries = {e["code"]: e for e in DEFAULT_SPEC["languages"]}
    assert list(entries)[0] == "base" and len(entries) - 1 >= 8
    assert DEFAULT_SPEC["task_test"] >= 1000 and DEFAULT_SPEC["parallel_test"] // 3 >= 100
    assert entries["lowres"]["parallel_train"] < entries["clone"]["parallel_train"]


def test_corpus_does_not_depend_on_string_hashing():
    """Set iteration order varies with PYTHONHASHSEED; the corpus and vocabulary must not."""
    script = ("from routing.organism.synthetic import *; "
              "s = default_spec(2); s.update(parallel_test=5, task_test=5); c = build_from_spec(s); "
              "print(build_tokenizer(c.languages).tokens, [e.text for e in c.task_test['shared50']])")
    outputs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": h}).stdout for h in ("0", "1")}
    assert len(outputs) == 1


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_rendering_is_a_function_of_meaning(seed):
    meaning = sample_sentence(random.Random(seed))
    again = sample_sentence(random.Random(seed))
    for language in LANGS.values():
        assert language.render(meaning) == language.render(again)


def test_own_words_are_disjoint_and_digits_are_shared():
    digits = {str(i) for i in range(1, 21)}
    own = {code: language.vocabulary() - LANGS["base"].vocabulary() for code, language in LANGS.items()}
    codes = list(LANGS)
    for i, a in enumerate(codes):
        for b in codes[i + 1:]:
            assert own[a].isdisjoint(own[b]), (a, b)
    for language in LANGS.values():
        assert [language.forms[k][""] for k in NUMERAL_KEYS] == [str(i) for i in range(1, 21)]
        assert digits <= language.vocabulary()
        assert 100 <= len(language.vocabulary()) <= 300
        words = [w for table in language.forms.values() for w in table.values()]
        assert len(words) == len(set(words)), language.code  # no homographs within a language


def _kept(code: str) -> set[str]:
    return {k for k in BASE_FORMS if k not in NUMERAL_KEYS and LANGS[code].forms[k] == BASE_FORMS[k]}


def test_shared_fractions_are_nested_and_exact():
    lexemes = len(BASE_FORMS) - len(NUMERAL_KEYS)
    for entry in SPEC["languages"]:
        assert len(_kept(entry["code"])) == round(entry["shared"] * lexemes), entry["code"]
    assert _kept("shared25") < _kept("shared50") < _kept("shared75") < _kept("base")
    assert _kept("sov50") == _kept("shared50")
    assert not _kept("clone") and not _kept("lowres")


def _clauses(keys: list[str]) -> list[list[str]]:
    clauses, current = [], []
    for key in keys:
        if key.startswith(("conj:", "punct:")):
            clauses.append(current)
            current = []
        else:
            current.append(key)
    return clauses


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_word_orders_are_what_they_claim(seed):
    rng = random.Random(seed)
    base = LANGS["base"]
    for meaning in (sample_sentence(rng), *sample_problem(rng).meanings()):
        base_keys = [k for k, _ in base.morphemes(meaning)]
        for code in ("shared75", "shared50", "shared25", "clone", "lowres"):
            assert LANGS[code].morphemes(meaning) == base.morphemes(meaning)
        for code in ("nounadj", "sov", "vso", "sov50"):
            keys = [k for k, _ in LANGS[code].morphemes(meaning)]
            assert Counter(keys) == Counter(k for k in base_keys if k != "aux:do" or code == "nounadj")
        if isinstance(meaning, HowMany):
            assert [k for k, _ in LANGS["sov"].morphemes(meaning)][-2:] == ["verb:have", "punct:?"]
            assert [k for k, _ in LANGS["vso"].morphemes(meaning)][3] == "verb:have"
            continue
        for clause, base_clause, sov, vso, nounadj in zip(
                meaning.clauses, _clauses(base_keys), *(_clauses([k for k, _ in LANGS[c].morphemes(meaning)])
                                                        for c in ("sov", "vso", "nounadj"))):
            verb = f"verb:{clause.verb}"
            rest, a = [k for k in base_clause if k != verb], 1 if clause.adverb else 0
            assert base_clause == [*rest[:base_clause.index(verb)], verb, *rest[base_clause.index(verb):]]
            assert vso == [*rest[:a], verb, *rest[a:]]
            assert sov[-1] == verb and Counter(sov[:-1]) == Counter(rest)
            if clause.place is not None:
                at = sov.index(f"place:{clause.place.place}")
                assert sov[at + 1] == f"prep:{clause.place.preposition}"  # postposition
                assert sov[at - 1] == "func:the" and sov[-1] == verb
            swapped = list(base_clause)
            for i, key in enumerate(base_clause):
                if key.startswith("adj:"):
                    assert base_clause[i + 1].startswith("noun:")
                    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
            assert nounadj == swapped


def _solve_base_text(question: str) -> int:
    """Recompute an answer from the base rendering alone: numerals and verbs, sentence by sentence."""
    gains, losses = {"buys", "buy", "finds", "find", "makes", "make"}, {"sells", "sell", "loses", "lose",
                                                                         "eats", "eat"}
    *facts, asked = [s.split() for s in question.split(" . ")]
    assert asked[:2] == ["how", "many"] and asked[-1] == "?"
    total = None
    for words in facts:
        amount = [int(w) for w in words if w.isdigit()][-1]  # the last number counts items
        if total is None:
            assert "has" in words or "have" in words
            total = amount
        else:
            total += amount if gains & set(words) else -amount
            assert (gains | losses) & set(words)
        assert 0 <= total <= 20
    return total


def test_task_answers_are_correct(corpus):
    examples = [e for split in (corpus.task_train, corpus.task_test) for e in split["base"]]
    for example in examples:
        assert example.answer == _solve_base_text(example.question)
        assert parse_answer(example.text) == example.answer
        assert example.text.endswith(f"{ANSWER_MARKER} {example.answer}")
    for code in corpus.languages:
        for example in corpus.task_test[code]:
            assert parse_answer(example.text) == corpus.problems[example.id].answer
    assert parse_answer("no marker 3") is None
    assert parse_answer(f"x {ANSWER_MARKER} seven") is None
    assert parse_answer(f"{ANSWER_MARKER} 1 {ANSWER_MARKER} 12") == 12


def test_tokenizer_round_trip_and_batches(corpus):
    tok = build_tokenizer(corpus.languages)
    assert (tok.pad_id, tok.tokens[tok.bos_id], tok.tokens[tok.answer_id]) == (0, "<bos>", ANSWER_MARKER)
    assert tok.tokens[5:26] == tuple(str(i) for i in range(21))
    assert tok.vocab_size == len(set().union(*(l.vocabulary() for l in LANGS.values())) | {"0"}) + 5
    assert not any(t.startswith("<lang") for t in tok.tokens)
    for code in corpus.languages:
        for text in [e.text for e in corpus.parallel_test[code] + corpus.task_test[code]]:
            ids = tok.encode(text, bos=True, eos=True)
            assert tok.unk_id not in ids and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
            assert tok.decode(ids, skip_control=True) == text
    assert tok.encode("ana zzzz") == [tok.token_id("ana"), tok.unk_id]

    ids, mask = tok.encode_batch(["ana runs .", "ben sleeps in the house ."], pad_to=8)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (2, 8)
    assert mask.sum(1).tolist() == [3, 6] and mask[0, :5].sum() == 0
    assert tok.decode(ids[0], skip_control=True) == "ana runs ."
    right, right_mask = tok.encode_batch(["ana runs ."], left_pad=False, bos=True)
    assert right.shape == (1, 4) and right_mask.tolist() == [[1, 1, 1, 1]] and right[0, 0] == tok.bos_id
    with pytest.raises(ValueError):
        tok.encode_batch(["ana runs ."], pad_to=2)
    assert Tokenizer(tok.tokens) == tok
    with pytest.raises(ValueError, match="start with"):
        Tokenizer(tok.tokens[1:])
