"""The organism's TFDS builders hold exactly what its generator makes from organism.json's spec: passages of
consecutive parallel test sentences, problems aligned by id, base training problems with their answers; a
changed organism.json is prepared afresh; bad folders and language codes are refused before any work."""
import json
from pathlib import Path

import pytest

from routing.data.organism import (SENTENCES_PER_PASSAGE, OrganismMath, OrganismPassages, load_organism_passages,
                                   read_organism)
from routing.data.source import SourceBuilder, read_records
from routing.data.suites import get_suite
from routing.organism import synthetic
from tests.helpers.organism import tiny_spec, write_organism_json


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    folder = tmp_path_factory.mktemp("organism")
    write_organism_json(folder, tiny_spec())
    return folder, synthetic.build_from_spec(tiny_spec()), tmp_path_factory.mktemp("tfds")


def prepared(builder_cls, folder, tfds):
    builder = builder_cls(source_dir=folder, data_dir=tfds)
    builder.download_and_prepare()
    return builder


def test_passages_join_consecutive_test_sentences_aligned_across_languages(organism):
    folder, corpus, tfds = organism
    records = read_records(prepared(OrganismPassages, folder, tfds), "devtest")
    assert sorted({r["language"] for r in records}) == sorted(corpus.languages)
    for code, sentences in corpus.parallel_test.items():
        rows = [r for r in records if r["language"] == code]
        texts = [s.text for s in sentences]
        expected = [" ".join(texts[i:i + SENTENCES_PER_PASSAGE]) for i in range(0, len(texts), SENTENCES_PER_PASSAGE)]
        assert [r["text"] for r in rows] == expected
        assert [r["passage_id"] for r in rows] == list(range(len(expected)))
        assert sum(r["num_sentences"] for r in rows) == len(sentences) == 30
    by_id = {}
    for r in records:
        by_id.setdefault(r["passage_id"], set()).add(r["url"])
    assert all(len(urls) == 1 for urls in by_id.values())  # the same sentence ids in every language


def test_problems_are_the_generators_aligned_by_id_with_1000_per_language(organism):
    folder, corpus, tfds = organism
    builder = prepared(OrganismMath, folder, tfds)
    test = read_records(builder, "test")
    for code, examples in corpus.task_test.items():
        rows = [r for r in test if r["language"] == code]
        assert len(rows) == len(examples) == 1000
        assert [(r["id"], r["question"], r["answer_number"]) for r in rows] == [
            (e.id, e.question, float(e.answer)) for e in examples]
    ids = {code: [r["id"] for r in test if r["language"] == code] for code in corpus.languages}
    assert len({tuple(v) for v in ids.values()}) == 1
    train = read_records(builder, "train")
    code = next(iter(corpus.languages))
    base = corpus.task_train[code]
    assert {r["language"] for r in train} == {code} and len(train) == len(base) == 40
    # question and worked answer are exactly the text the organism trains on
    assert [f"{r['question']} {r['answer']}" for r in train] == [e.text for e in base]


def test_a_changed_organism_json_is_prepared_afresh(tmp_path):
    folder = tmp_path / "organism"
    write_organism_json(folder, tiny_spec(seed=0, task_test=5))
    first = prepared(OrganismMath, folder, tmp_path / "tfds")
    before = read_records(first, "test")
    write_organism_json(folder, tiny_spec(seed=1, task_test=5))
    second = prepared(OrganismMath, folder, tmp_path / "tfds")
    after = read_records(second, "test")
    assert first.data_path != second.data_path and before != after
    expected = next(iter(synthetic.build_from_spec(tiny_spec(seed=1, task_test=5)).task_test.values()))
    assert [r["question"] for r in after if r["language"] == expected[0].lang] == [e.question for e in expected]


def test_passages_load_by_language_cut_to_the_first(organism):
    folder, corpus, tfds = organism
    base, other = list(corpus.languages)[:2]
    passages = load_organism_passages(folder, [other, base], tfds, max_passages=2)
    assert list(passages) == [other, base]
    assert [r["passage_id"] for r in passages[base]] == [0, 1]
    assert passages[base][0]["text"].startswith(corpus.parallel_test[base][0].text)


def test_unknown_language_codes_are_refused_with_close_matches_before_any_work(organism, monkeypatch):
    folder, corpus, tfds = organism
    base = next(iter(corpus.languages))
    monkeypatch.setattr(SourceBuilder, "download_and_prepare", lambda self: pytest.fail("data was prepared"))
    with pytest.raises(ValueError, match=rf"unknown organism .* code\(s\): '{base}x' \(close matches: {base}"):
        load_organism_passages(folder, [f"{base}x"], tfds)


def test_a_folder_without_a_well_formed_organism_json_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no organism.json in"):
        read_organism(tmp_path)
    path = tmp_path / "organism.json"
    for record, message in (({"format": "other"}, "not a 'moe-routing organism/1' file"),
                            ({"format": "moe-routing organism/1", "base": "x", "languages": ["base"], "data": {}},
                             "'base' first"),
                            ({"format": "moe-routing organism/1", "base": "base", "languages": ["base"]},
                             "generator's spec")):
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match=message):
            read_organism(tmp_path)


def test_the_organism_data_is_read_from_the_model_folder_unless_given(tmp_path):
    organism, real = get_suite("organism"), get_suite("real")
    assert organism.data_dir(None, str(tmp_path)) == tmp_path and organism.data_dir("data", "model") == Path("data")
    assert real.data_dir(None, str(tmp_path)) is None and real.data_dir("data", "model") == "data"
