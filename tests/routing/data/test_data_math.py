"""MGSM and GSM8K builders and number parsing."""
import pytest
import tensorflow_datasets as tfds

from routing.data import source
from routing.data.math_problems import Gsm8k, Mgsm, gsm8k_final_answer, parse_number
from routing.data.source import read_records

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def test_mgsm_rows_align(shared_data, data_dir):
    builder = Mgsm(source_dir=shared_data, data_dir=data_dir)
    builder.download_and_prepare()
    records = read_records(builder, "test")
    languages = sorted({r["language"] for r in records})
    assert len(languages) == 11 and "ben_Beng" in languages and "zho_Hans" in languages
    answers = {}
    for record in records:
        answers.setdefault(record["language"], []).append((record["id"], record["answer_number"]))
    assert all(len(rows) == 250 for rows in answers.values())
    assert len({tuple(rows) for rows in answers.values()}) == 1  # same ids and answers in every language
    assert answers["eng_Latn"][0] == (0, 18.0)


def test_gsm8k_splits_and_final_answers(shared_data, data_dir):
    builder = Gsm8k(source_dir=shared_data, data_dir=data_dir)
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 7473
    test = read_records(builder, "test")
    assert len(test) == 1319
    assert test[0]["answer"].endswith("#### 18") and test[0]["answer_number"] == 18.0


def test_number_parsing():
    assert parse_number(" 1,080 ") == 1080.0 and parse_number("-3.5") == -3.5
    assert gsm8k_final_answer("so 2+2=4\n#### 4") == 4.0
    with pytest.raises(ValueError):
        parse_number("12 dollars")
    with pytest.raises(ValueError, match="####"):
        gsm8k_final_answer("no final answer")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="mgsm_bn.tsv"):
        Mgsm(source_dir=tmp_path, data_dir=tmp_path / "out").download_and_prepare()
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        Gsm8k(source_dir=tmp_path, data_dir=tmp_path / "out").download_and_prepare()


def test_download_path_fetches_each_file_from_its_url(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "offline_reason", lambda url: None)  # the download manager is faked
    requested = {}

    class FakeDownloads:
        def download(self, urls):
            requested.update(urls)
            for rel in urls:
                (tmp_path / rel.replace("/", "_")).write_text("Q?\t1,000\n", encoding="utf-8")
            return {rel: tmp_path / rel.replace("/", "_") for rel in urls}

    generators = Mgsm(data_dir=tmp_path / "out")._split_generators(FakeDownloads())
    records = [record for _, record in generators["test"]]
    url = "https://raw.githubusercontent.com/google-research/url-nlp/main/mgsm/mgsm_th.tsv"
    assert requested["mgsm/mgsm_th.tsv"] == url
    assert len(records) == 11 and records[0]["answer_number"] == 1000.0
