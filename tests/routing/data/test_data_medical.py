"""Medical multiple choice (aligned translations, the Arabic gap) and MedInstruct builders."""
import pytest
import tensorflow_datasets as tfds

from routing.data.medical import MedicalMcq, MedInstruct, letter_label, parse_options, translated_mcq
from routing.data.source import read_records

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def test_translations_align_to_english_ids(shared_data, data_dir):
    builder = MedicalMcq(source_dir=shared_data, data_dir=data_dir)
    builder.download_and_prepare()
    grouped = {}
    for record in read_records(builder, "test"):
        grouped.setdefault(record["language"], {})[record["id"]] = record
    english, hindi, arabic = grouped["eng_Latn"], grouped["hin_Deva"], grouped["arb_Arab"]
    assert (len(english), len(hindi), len(arabic)) == (1089, 1089, 1088)
    assert set(english) - set(arabic) == {817}
    assert all(arabic[i]["label"] == english[i]["label"] for i in arabic)
    assert all(len(r["choices"]) == 4 for r in arabic.values())
    assert "FGFR3" in english[816]["question"] and "FGFR3" in arabic[816]["question"]
    assert "gravida 3" in english[818]["question"] and "39" in hindi[818]["question"]
    assert "الولادة" in arabic[818]["question"]  # labour: Arabic row 817 translates English row 818


def test_option_and_answer_parsing():
    assert parse_options("(A) one\n(B) two\n(C) three\n(D) four") == ["one", "two", "three", "four"]
    with pytest.raises(ValueError):
        parse_options("(A) one\n(B) two\n(D) four")
    assert letter_label("(C)") == 2 == letter_label("c")
    with pytest.raises(ValueError):
        letter_label("(E)")


def test_misaligned_translation_is_rejected():
    english = [{"label": 0}, {"label": 1}]
    row = {"question": "q", "options": "(A) a\n(B) b\n(C) c\n(D) d"}
    with pytest.raises(ValueError, match="needs 2"):
        translated_mcq([{**row, "answer": "(A)"}], "hi", english)
    with pytest.raises(ValueError, match="answers A"):
        translated_mcq([{**row, "answer": "(A)"}, {**row, "answer": "(A)"}], "hi", english)


def test_medinstruct_reference_answers(shared_data, data_dir):
    default = MedInstruct(source_dir=shared_data, data_dir=data_dir)
    gpt4 = MedInstruct(config="gpt-4", source_dir=shared_data, data_dir=data_dir)
    for builder in (default, gpt4):
        builder.download_and_prepare()
    claude, gpt = read_records(default, "test"), read_records(gpt4, "test")
    assert len(claude) == len(gpt) == 216
    assert claude[0]["instruction"] == gpt[0]["instruction"] and claude[0]["input"] == ""
    assert claude[0]["output"] != gpt[0]["output"] and gpt[0]["output"].startswith("While I strongly")


def test_mcq_needs_a_local_folder(tmp_path):
    with pytest.raises(ValueError, match="source_dir"):
        MedicalMcq(data_dir=tmp_path).download_and_prepare()
    (tmp_path / "medical").mkdir()
    with pytest.raises(FileNotFoundError, match="mmlu_medical_en.jsonl"):
        MedicalMcq(source_dir=tmp_path, data_dir=tmp_path / "out").download_and_prepare()
