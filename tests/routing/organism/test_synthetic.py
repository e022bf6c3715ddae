"""The synthetic corpus: parallelism, determinism, the language variants, task answers, the tokenizer."""
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.organism.synthetic import (ANSWER_MARKER, CorpusSizes, Tokenizer, build_corpus, build_tokenizer,
                                        make_languages, parse_answer)
from routing.organism.synthetic.grammar import BASE_FORMS, NUMERALS, HowMany, sample_sentence
from routing.organism.synthetic.task import sample_problem

SMALL = CorpusSizes(parallel_train={"base": 60, "relex": 60, "verbfinal": 60, "shared": 60, "lowres": 7},
                    parallel_test=20, task_train={"base": 40, "relex": 3, "shared": 2}, task_test=15)
LANGS = make_languages()
seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(0, SMALL)


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


def test_training_sizes_per_language(corpus):
    for code in LANGS:
        assert len(corpus.parallel_train[code]) == SMALL.parallel_train[code]
        assert len(corpus.task_train[code]) == SMALL.task_train.get(code, 0)
        assert len(corpus.parallel_test[code]) == SMALL.parallel_test
        assert len(corpus.task_test[code]) == SMALL.task_test
    assert [e.id for e in corpus.parallel_train["lowres"]] == list(range(7))
    with pytest.raises(ValueError, match="unknown"):
        build_corpus(0, CorpusSizes(task_train={"klingon": 3}))


def test_determinism():
    assert build_corpus(5, SMALL) == build_corpus(5, SMALL)
    assert build_corpus(5, SMALL).parallel_train != build_corpus(6, SMALL).parallel_train
    assert make_languages(0) == LANGS
    assert make_languages(1)["relex"].forms != LANGS["relex"].forms


def test_corpus_does_not_depend_on_string_hashing():
    """Set iteration order varies with PYTHONHASHSEED; the corpus and vocabulary must not."""
    script = ("from routing.organism.synthetic import *; "
              "c = build_corpus(2, CorpusSizes(parallel_test=5, task_test=5)); "
              "print(build_tokenizer(c.languages).tokens, [e.text for e in c.task_test['shared']])")
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


def test_relexified_vocabularies_are_disjoint():
    disjoint = ["base", "relex", "verbfinal", "lowres"]
    for i, a in enumerate(disjoint):
        for b in disjoint[i + 1:]:
            assert LANGS[a].vocabulary().isdisjoint(LANGS[b].vocabulary()), (a, b)
    assert LANGS["shared"].vocabulary().isdisjoint(LANGS["relex"].vocabulary() | LANGS["lowres"].vocabulary())
    for language in LANGS.values():
        assert 100 <= len(language.vocabulary()) <= 300
        words = [w for table in language.forms.values() for w in table.values()]
        assert len(words) == len(set(words)), language.code  # no homographs within a language


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_relex_is_a_clone_and_verbfinal_reorders(seed):
    rng = random.Random(seed)
    base, relex, verbfinal = LANGS["base"], LANGS["relex"], LANGS["verbfinal"]
    for meaning in (sample_sentence(rng), *sample_problem(rng).meanings()):
        assert relex.morphemes(meaning) == base.morphemes(meaning)
        keys = [k for k, _ in verbfinal.morphemes(meaning)]
        if isinstance(meaning, HowMany):
            assert keys[-2:] == ["verb:have", "punct:?"]
            continue
        assert Counter(keys) == Counter(k for k, _ in base.morphemes(meaning))
        clauses, current = [], []
        for key in keys:
            if key.startswith(("conj:", "punct:")):
                clauses.append(current)
                current = []
            else:
                current.append(key)
        assert len(clauses) == len(meaning.clauses)
        assert all(clause[-1].startswith("verb:") for clause in clauses)
        for clause, words in zip(meaning.clauses, clauses):
            if clause.place is not None:
                at = words.index(f"place:{clause.place.place}")
                assert words[at + 1] == f"prep:{clause.place.preposition}"  # postposition
        if any(c.obj is not None or c.place is not None for c in meaning.clauses):
            assert keys != [k for k, _ in base.morphemes(meaning)]


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_shared_overlaps_base_by_the_configured_fraction(fraction):
    languages = make_languages(0, shared_fraction=fraction)
    base, shared = languages["base"], languages["shared"]
    kept = [k for k in BASE_FORMS if shared.forms[k] == base.forms[k]]
    assert len(kept) == round(fraction * len(BASE_FORMS))
    overlap = len(base.vocabulary() & shared.vocabulary()) / len(base.vocabulary())
    assert abs(overlap - fraction) < 0.1
    for code in ("relex", "verbfinal", "lowres"):
        assert shared.vocabulary().isdisjoint(languages[code].vocabulary())


def _solve_base_text(question: str) -> int:
    """Recompute an answer from the base rendering alone: numerals and verbs, sentence by sentence."""
    gains, losses = {"buys", "buy", "finds", "find", "makes", "make"}, {"sells", "sell", "loses", "lose",
                                                                         "eats", "eat"}
    *facts, asked = [s.split() for s in question.split(" . ")]
    assert asked[:2] == ["how", "many"] and asked[-1] == "?"
    total = None
    for words in facts:
        amount = [NUMERALS.index(w) + 1 for w in words if w in NUMERALS][-1]  # the last numeral counts items
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


def test_tokenizer_round_trip_and_batches(corpus, tmp_path):
    tok = build_tokenizer(corpus.languages)
    assert (tok.pad_id, tok.tokens[tok.bos_id], tok.tokens[tok.answer_id]) == (0, "<bos>", ANSWER_MARKER)
    assert tok.vocab_size == len(set().union(*(l.vocabulary() for l in LANGS.values()))) + 5 + 5 + 21
    for code, language in corpus.languages.items():
        assert tok.decode([tok.lang_id(code)]) == language.tag
        texts = [e.text for e in corpus.parallel_test[code] + corpus.task_test[code]]
        for text in texts:
            ids = tok.encode(f"{language.tag} {text}", bos=True, eos=True)
            assert tok.unk_id not in ids
            assert tok.decode(ids, skip_control=True) == f"{language.tag} {text}"
    assert tok.encode("ana zzzz") == [tok.token_id("ana"), tok.unk_id]

    ids, mask = tok.encode_batch(["ana runs .", "ben sleeps in the house ."], pad_to=8)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (2, 8)
    assert mask.sum(1).tolist() == [3, 6] and mask[0, :5].sum() == 0
    assert tok.decode(ids[0], skip_control=True) == "ana runs ."
    right, right_mask = tok.encode_batch(["ana runs ."], left_pad=False, bos=True)
    assert right.shape == (1, 4) and right_mask.tolist() == [[1, 1, 1, 1]] and right[0, 0] == tok.bos_id
    with pytest.raises(ValueError):
        tok.encode_batch(["ana runs ."], pad_to=2)

    path = tmp_path / "tok.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]
    loaded = Tokenizer.load(path)
    assert loaded == tok and loaded.encode(corpus.task_test["verbfinal"][0].text) == tok.encode(
        corpus.task_test["verbfinal"][0].text)
