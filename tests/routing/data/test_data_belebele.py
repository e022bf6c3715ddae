"""BELEBELE builder: alignment by id, few-shot labels, bad inputs."""
import pytest
import tensorflow_datasets as tfds

from routing.data.belebele import Belebele, belebele_record
from routing.data.source import read_records

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def builder(shared_data, tmp_path_factory):
    builder = Belebele(source_dir=shared_data, data_dir=tmp_path_factory.mktemp("tfds"))
    builder.download_and_prepare()
    return builder


def by_language(records):
    grouped = {}
    for record in records:
        grouped.setdefault(record["language"], {})[record["id"]] = record
    return grouped


def test_english_and_thai_align_by_id(builder):
    test = by_language(read_records(builder, "test"))
    english, thai = test["eng_Latn"], test["tha_Thai"]
    assert len(english) == len(thai) == 895 and english.keys() == thai.keys()
    assert all(english[i]["label"] == thai[i]["label"] for i in english)
    assert all(len(r["choices"]) == 4 and 0 <= r["label"] <= 3 for r in english.values())
    assert thai[0]["passage"] != english[0]["passage"]
    assert set(test) >= {"zho_Hans", "zho_Hant", "jav_Latn", "tgl_Latn"}


def test_fewshot_split_has_integer_labels(builder):
    fewshot = by_language(read_records(builder, "fewshot"))
    assert {len(rows) for rows in fewshot.values()} == {5}
    assert fewshot["eng_Latn"][809]["label"] == 3  # "D" in the source


def test_record_conversion_rejects_bad_labels():
    row = {"id": "7", "label": "E", "prompts": [{"text": "p", "question": "q", "choice1": "a", "choice2": "b",
                                                  "choice3": "c", "choice4": "d"}]}
    with pytest.raises(ValueError, match="'E'"):
        belebele_record(row, "eng_Latn")
    row["label"] = "B"
    assert belebele_record(row, "eng_Latn")["label"] == 1 and belebele_record(row, "eng_Latn")["id"] == 7


def test_needs_a_local_folder(tmp_path):
    with pytest.raises(ValueError, match="source_dir"):
        Belebele(data_dir=tmp_path / "out").download_and_prepare()
    with pytest.raises(FileNotFoundError, match="belebele"):
        Belebele(source_dir=tmp_path, data_dir=tmp_path / "out").download_and_prepare()
