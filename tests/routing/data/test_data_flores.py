"""FLORES-200 builder: offline preparation (once per source content, every language, one announcing line),
languages chosen when reading, alignment, passage grouping, bad inputs."""
import os
import sys
from pathlib import Path

import pytest

from routing.data.flores import Flores200, load_passages, passage_spans
from routing.data import source
from routing.data.source import read_lines, read_records, record_languages

FIVE = ["eng_Latn", "arb_Arab", "arb_Latn", "zho_Hans", "ory_Orya"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def passages(shared_data, data_dir):
    builder = Flores200(source_dir=shared_data, data_dir=data_dir)
    builder.download_and_prepare()
    return read_records(builder, "devtest", languages=FIVE)


def test_passages_align_across_languages(passages, shared_data):
    by_language = {code: [r for r in passages if r["language"] == code] for code in FIVE}
    assert [r["language"] for r in passages[::281]] == FIVE
    for records in by_language.values():
        assert [r["passage_id"] for r in records] == list(range(281))
        assert sum(r["num_sentences"] for r in records) == 1012
    assert len({tuple(r["url"] for r in records) for records in by_language.values()}) == 1
    for code, records in by_language.items():
        sentences = read_lines(shared_data / "flores200" / "devtest" / f"{code}.devtest")
        first = records[0]
        assert first["text"] == " ".join(sentences[: first["num_sentences"]])
        assert records[-1]["text"].endswith(sentences[-1])


def test_reading_back_reuses_the_prepared_folder_without_tensorflow(passages, shared_data, data_dir):
    builder = Flores200(config="passages", source_dir=shared_data, data_dir=data_dir)
    info = Path(builder.data_path) / "dataset_info.json"
    stamp = info.stat().st_mtime_ns
    builder.download_and_prepare()
    assert read_records(builder, "devtest", languages=FIVE) == passages
    assert len(record_languages(builder, "devtest")) == 204  # every language prepared, each stored once
    assert info.stat().st_mtime_ns == stamp  # not prepared again
    assert "tensorflow" not in sys.modules


def _copy_flores(shared_data, root, languages):
    """A source folder with the real FLORES files of ``languages`` only."""
    (root / "flores200" / "devtest").mkdir(parents=True)
    (root / "flores200" / "metadata_devtest.tsv").write_bytes(
        (shared_data / "flores200" / "metadata_devtest.tsv").read_bytes())
    for code in languages:
        name = f"flores200/devtest/{code}.devtest"
        (root / name).write_bytes((shared_data / name).read_bytes())
    return root


def test_sentences_config(shared_data, tmp_path, passages):
    src = _copy_flores(shared_data, tmp_path / "src", ["arb_Latn", "eng_Latn", "fra_Latn"])
    builder = Flores200(config="sentences", source_dir=src, data_dir=tmp_path / "out")
    assert builder.builder_config.unit == "sentences"
    builder.download_and_prepare()
    records = read_records(builder, "devtest", languages=["arb_Latn", "eng_Latn"])
    assert len(records) == 2 * 1012
    assert [r["sentence_id"] for r in records[:1012]] == list(range(1012))
    english = [r for r in passages if r["language"] == "eng_Latn"]
    first_passage = [r["text"] for r in records[1012:] if r["passage_id"] == 0]
    assert " ".join(first_passage) == english[0]["text"]


def test_passage_spans_group_consecutive_urls_only():
    assert passage_spans(["a", "a", "b", "a"]) == [("a", 0, 2), ("b", 2, 3), ("a", 3, 4)]


def test_each_source_is_prepared_once_for_any_languages_with_one_line(shared_data, tmp_path, capfd):
    src = _copy_flores(shared_data, tmp_path / "src", ["arb_Arab", "eng_Latn", "fra_Latn", "zho_Hans"])
    first = load_passages(src, ["eng_Latn", "fra_Latn"], tmp_path / "cache", max_passages=2)
    second = load_passages(src, ["zho_Hans", "eng_Latn", "arb_Arab"], tmp_path / "cache")
    assert list(first) == ["eng_Latn", "fra_Latn"] and list(second) == ["zho_Hans", "eng_Latn", "arb_Arab"]
    assert first["eng_Latn"] == second["eng_Latn"][:2] and len(second["arb_Arab"]) == 281
    assert [path.name for path in (tmp_path / "cache" / "flores200_devtest").glob("passages*")] == [
        Flores200(source_dir=src, data_dir=tmp_path / "cache").builder_config.name]
    out, err = capfd.readouterr()
    prepared = f"preparing flores200_devtest (devtest passages, 4 languages) from {src} into {tmp_path / 'cache'}"
    assert err.count(prepared) == 1 and err.count("\n") == 1 and out == ""  # no TFDS banner, warnings or bars


def test_default_folder_is_the_environment_or_the_user_cache(tmp_path, monkeypatch):
    _tiny_flores(tmp_path / "src", ["eng_Latn"])
    monkeypatch.delenv("MOE_TFDS_DIR", raising=False)
    monkeypatch.delenv("MOE_ROUTING_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    builder = Flores200(source_dir=tmp_path / "src")
    assert Path(builder.data_path).is_relative_to(tmp_path / "xdg" / "moe-routing" / "tfds")
    monkeypatch.setenv("MOE_TFDS_DIR", str(tmp_path / "env"))
    builder = Flores200(source_dir=tmp_path / "src")
    assert Path(builder.data_path).is_relative_to(tmp_path / "env")
    builder.download_and_prepare()
    assert read_records(builder, "devtest", languages=["eng_Latn"])[1]["text"] == "s3"


def test_reading_a_language_the_data_lacks_is_an_error(tmp_path):
    _tiny_flores(tmp_path / "src", ["eng_Latn", "fra_Latn"])
    builder = Flores200(source_dir=tmp_path / "src", data_dir=tmp_path / "out")
    builder.download_and_prepare()
    assert record_languages(builder, "devtest") == ["eng_Latn", "fra_Latn"]
    with pytest.raises(ValueError, match="no records in deu_Latn"):
        read_records(builder, "devtest", languages=["eng_Latn", "deu_Latn"])


def test_unusable_data_dir_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match=f"{tmp_path / 'file'} is a file, not a folder"):
        Flores200(data_dir=tmp_path / "file")


def test_bad_languages_and_configs(shared_data, tmp_path):
    with pytest.raises(ValueError, match="arb_Arab"):
        load_passages(shared_data, ["arb"], tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before anything was prepared
    with pytest.raises(ValueError, match="unknown config"):
        Flores200(config="paragraphs", data_dir=tmp_path)


def _tiny_flores(root, languages, lines=("s1", "s2", "s3")):
    """A synthetic FLORES folder: three sentences, URLs u1 u1 u2."""
    (root / "flores200" / "devtest").mkdir(parents=True)
    (root / "flores200" / "metadata_devtest.tsv").write_text("URL\tdomain\nu1\tx\nu1\tx\nu2\tx\n")
    for code in languages:
        (root / "flores200" / "devtest" / f"{code}.devtest").write_text("\n".join(lines) + "\n")


def test_synthetic_folder_and_missing_files(tmp_path):
    _tiny_flores(tmp_path / "src", ["eng_Latn", "fra_Latn"])
    builder = Flores200(source_dir=tmp_path / "src", data_dir=tmp_path / "out")
    builder.download_and_prepare()
    assert [r["text"] for r in read_records(builder, "devtest", languages=["fra_Latn"])] == ["s1 s2", "s3"]
    with pytest.raises(ValueError, match="deu_Latn"):  # a real code, but not in this folder
        load_passages(tmp_path / "src", ["deu_Latn"], tmp_path / "out")
    (tmp_path / "src" / "flores200" / "metadata_devtest.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="metadata_devtest.tsv"):
        Flores200(source_dir=tmp_path / "src", data_dir=tmp_path / "out")


def test_line_count_mismatch_is_an_error(tmp_path):
    _tiny_flores(tmp_path / "src", ["eng_Latn"], lines=("s1", "s2"))
    builder = Flores200(source_dir=tmp_path / "src", data_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="2 lines"):
        builder.download_and_prepare()


class FakeDownloads:
    """Stands in for TFDS's download manager: the archive is already 'extracted' at ``root``."""

    def __init__(self, root):
        self.root, self.urls = root, []

    def download_and_extract(self, url):
        self.urls.append(url)
        return self.root


def test_download_path_reads_the_official_archive_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "offline_reason", lambda url: None)  # the download manager is faked
    _tiny_flores(tmp_path, ["eng_Latn"])
    (tmp_path / "flores200").rename(tmp_path / "flores200_dataset")
    downloads = FakeDownloads(tmp_path)
    monkeypatch.setattr(Flores200, "_languages", lambda self: ("eng_Latn",))  # the tiny archive has one language
    builder = Flores200(config="sentences", data_dir=tmp_path / "out")
    records = [record for _, record in builder._split_generators(downloads)["devtest"]]
    assert downloads.urls == ["https://dl.fbaipublicfiles.com/nllb/flores200_dataset.tar.gz"]
    assert [(r["text"], r["passage_id"]) for r in records] == [("s1", 0), ("s2", 0), ("s3", 1)]


def test_prepared_data_is_keyed_by_source_content(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_ROUTING_CACHE", str(tmp_path / "cache"))
    _tiny_flores(tmp_path / "src", ["eng_Latn"])
    first = Flores200(source_dir=tmp_path / "src", data_dir=tmp_path / "out")
    first.download_and_prepare()
    assert [r["text"] for r in read_records(first, "devtest")] == ["s1 s2", "s3"]
    devtest = tmp_path / "src" / "flores200" / "devtest" / "eng_Latn.devtest"
    stat = devtest.stat()
    devtest.write_text("t1\nt2\nt3\n")  # same size, same modification time: only the bytes differ
    os.utime(devtest, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = Flores200(source_dir=tmp_path / "src", data_dir=tmp_path / "out")
    assert second.data_path != first.data_path
    second.download_and_prepare()
    assert [r["text"] for r in read_records(second, "devtest")] == ["t1 t2", "t3"]
    assert [r["text"] for r in read_records(first, "devtest")] == ["s1 s2", "s3"]  # the old data set is kept


def test_offline_download_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    class NoDownloads:
        def download_and_extract(self, url):
            raise AssertionError("a download was attempted")

    builder = Flores200(config="sentences", data_dir=tmp_path / "out")
    with pytest.raises(ConnectionError, match=r"cannot download its source \(HF_HUB_OFFLINE is set\).*--data-dir"):
        builder._split_generators(NoDownloads())
