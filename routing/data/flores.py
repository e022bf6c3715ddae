"""FLORES-200 devtest as a TFDS builder: passages (sentences grouped by source URL) or plain sentences.

Records are aligned across languages by ``passage_id`` (passages) or ``sentence_id`` (sentences) and
stored language by language, each language in source order.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from routing.data.languages import flores_languages, validate_flores_languages
from routing.data.source import SourceBuilder, first_passages, read_lines, read_records

FLORES_URL = "https://dl.fbaipublicfiles.com/nllb/flores200_dataset.tar.gz"
METADATA = "flores200/metadata_devtest.tsv"
UNITS = ("passages", "sentences")


@dataclasses.dataclass(eq=False)
class Flores200Config(tfds.core.BuilderConfig):
    """``unit``: "passages" or "sentences"."""

    unit: str = "passages"


def passage_spans(urls: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(url, first_sentence, end_sentence)`` for each run of consecutive sentences sharing a URL."""
    spans, start = [], 0
    for url, run in itertools.groupby(urls):
        length = sum(1 for _ in run)
        spans.append((url, start, start + length))
        start += length
    return spans


class Flores200(SourceBuilder):
    """FLORES-200 devtest (1012 sentences; 281 passages when grouped by consecutive source URL).

    Split ``"devtest"``. Passage records: passage_id, url, language, text (sentences joined by one space),
    num_sentences. Sentence records: sentence_id, passage_id, url, language, text.

    Configs: ``passages`` (the default) and ``sentences``. Every language of the source folder (all 204 when
    downloaded) is prepared, once; choose languages when reading (``read_records(builder, "devtest",
    languages=...)``, or ``load_passages``).
    """

    name = "flores200_devtest"
    DESCRIPTION = "FLORES-200 devtest, aligned across languages."
    HOMEPAGE = "https://github.com/facebookresearch/flores/tree/main/flores200"
    BUILDER_CONFIGS = [Flores200Config(name=unit, unit=unit, description=f"FLORES-200 devtest {unit}")
                       for unit in UNITS]
    DEFAULT_CONFIG_NAME = "passages"

    def _languages(self) -> tuple[str, ...]:
        """The languages prepared: those of the source folder, or all 204 when downloading."""
        return flores_languages(self.source_dir / "flores200" if self.source_dir is not None else None)

    def source_files(self, config: Flores200Config) -> list[str]:
        return [METADATA, *(f"flores200/devtest/{code}.devtest" for code in self._languages())]

    def summary(self) -> str:
        return f"devtest {self.builder_config.unit}, {len(self._languages())} languages"

    def _features(self) -> dict[str, Any]:
        text = tfds.features.Text()
        if self.builder_config.unit == "passages":
            return {"passage_id": np.int32, "url": text, "language": text, "text": text, "num_sentences": np.int32}
        return {"sentence_id": np.int32, "passage_id": np.int32, "url": text, "language": text, "text": text}

    def _splits(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        paths = self._locate(dl_manager)
        return {"devtest": self._generate_examples(paths, self._languages())}

    def _download(self, dl_manager: tfds.download.DownloadManager, relpaths: Sequence[str]) -> dict[str, Path]:
        """The official archive holds ``flores200_dataset/{devtest/,metadata_devtest.tsv}``."""
        self._require_network(FLORES_URL)
        root = Path(dl_manager.download_and_extract(FLORES_URL)) / "flores200_dataset"
        return {rel: root / rel.removeprefix("flores200/") for rel in relpaths}

    def _generate_examples(self, paths: dict[str, Path], languages: Sequence[str]) -> Iterator[tuple[str, dict]]:
        with paths[METADATA].open(encoding="utf-8", newline="") as handle:
            urls = [row["URL"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
        spans = passage_spans(urls)
        passage_of = [passage_id for passage_id, (_, start, end) in enumerate(spans) for _ in range(start, end)]
        for code in languages:
            path = paths[f"flores200/devtest/{code}.devtest"]
            sentences = read_lines(path)
            if len(sentences) != len(urls):
                raise ValueError(f"{path} has {len(sentences)} lines; {paths[METADATA]} lists {len(urls)}")
            if self.builder_config.unit == "passages":
                for passage_id, (url, start, end) in enumerate(spans):
                    yield f"{code}/{passage_id}", {
                        "passage_id": passage_id, "url": url, "language": code,
                        "text": " ".join(sentences[start:end]), "num_sentences": end - start}
            else:
                for sentence_id, sentence in enumerate(sentences):
                    yield f"{code}/{sentence_id}", {
                        "sentence_id": sentence_id, "passage_id": passage_of[sentence_id],
                        "url": urls[sentence_id], "language": code, "text": sentence}


def load_passages(source_dir: str | Path | None, languages: Sequence[str], tfds_dir: str | Path | None = None,
                  max_passages: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Passage records per language (the first ``max_passages`` by passage id) from FLORES prepared through TFDS
    in ``tfds_dir`` (None: the default cache folder) from ``source_dir`` (a folder like shared/data; None:
    downloaded from the FLORES source). Unknown languages and those without a devtest file in ``source_dir``
    are refused before anything is prepared."""
    present = flores_languages(Path(source_dir) / "flores200" if source_dir is not None else None)
    chosen = validate_flores_languages(languages, present)
    builder = Flores200(config="passages", source_dir=source_dir, data_dir=tfds_dir)
    builder.download_and_prepare()
    return first_passages(read_records(builder, "devtest", languages=chosen), chosen, max_passages)
