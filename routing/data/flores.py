"""FLORES-200 devtest as a TFDS builder: passages (sentences grouped by source URL) or plain sentences.

Records are aligned across languages by ``passage_id`` (passages) or ``sentence_id`` (sentences) and
stored language by language, each language in source order.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from routing.data.languages import PAPER_LANGUAGES, flores_languages, validate_flores_languages
from routing.data.source import SourceBuilder, read_lines, read_records

FLORES_URL = "https://dl.fbaipublicfiles.com/nllb/flores200_dataset.tar.gz"
METADATA = "flores200/metadata_devtest.tsv"
UNITS = ("passages", "sentences")


@dataclasses.dataclass(eq=False)
class Flores200Config(tfds.core.BuilderConfig):
    """``unit``: "passages" or "sentences"; ``languages``: FLORES codes in record order, () for all 204."""

    unit: str = "passages"
    languages: tuple[str, ...] = ()


def flores_config(unit: str, languages: Sequence[str]) -> Flores200Config:
    """A config for any language set; its name (the prepared folder) is derived from unit and languages."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    chosen = validate_flores_languages(languages)
    if len(chosen) <= 6:
        name = "-".join((unit, *chosen))
    else:
        digest = hashlib.sha1(",".join(chosen).encode()).hexdigest()[:10]
        name = f"{unit}-{len(chosen)}langs-{digest}"
    return Flores200Config(name=name, unit=unit, languages=chosen,
                           description=f"FLORES-200 devtest {unit} in {', '.join(chosen)}")


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

    Configs: ``passages_paper``/``sentences_paper`` (the paper's 15 languages, default passages),
    ``passages_all``/``sentences_all`` (all 204), or any set via ``languages=[...]`` (keeps the unit of
    ``config``) or ``config=flores_config(unit, languages)``. Only the chosen languages are prepared.
    """

    name = "flores200_devtest"
    DESCRIPTION = "FLORES-200 devtest, aligned across languages."
    HOMEPAGE = "https://github.com/facebookresearch/flores/tree/main/flores200"
    BUILDER_CONFIGS = [
        Flores200Config(name=f"{unit}_{label}", unit=unit, languages=languages,
                        description=f"FLORES-200 devtest {unit}, {label} languages")
        for label, languages in (("paper", PAPER_LANGUAGES), ("all", ()))
        for unit in UNITS
    ]
    DEFAULT_CONFIG_NAME = "passages_paper"

    def __init__(
        self,
        *,
        languages: Sequence[str] | None = None,
        config: str | Flores200Config | None = None,
        source_dir: str | Path | None = None,
        **kwargs: Any,
    ):
        if languages is not None:
            base = config if isinstance(config, Flores200Config) else self.builder_configs.get(
                config or self.DEFAULT_CONFIG_NAME)
            if base is None:
                raise ValueError(f"unknown config {config!r}; known: {sorted(self.builder_configs)}")
            config = flores_config(base.unit, languages)
        super().__init__(config=config, source_dir=source_dir, **kwargs)

    def _languages(self, config: Flores200Config) -> tuple[str, ...]:
        """The config's languages (all those of the source folder, or all 204, for ``()``), checked against
        the source folder's devtest files."""
        present = flores_languages(self.source_dir / "flores200" if self.source_dir is not None else None)
        return validate_flores_languages(config.languages, present) if config.languages else present

    def source_files(self, config: Flores200Config) -> list[str]:
        return [METADATA, *(f"flores200/devtest/{code}.devtest" for code in self._languages(config))]

    def _features(self) -> dict[str, Any]:
        text = tfds.features.Text()
        if self.builder_config.unit == "passages":
            return {"passage_id": np.int32, "url": text, "language": text, "text": text, "num_sentences": np.int32}
        return {"sentence_id": np.int32, "passage_id": np.int32, "url": text, "language": text, "text": text}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        paths = self._locate(dl_manager)
        return {"devtest": self._generate_examples(paths, self._languages(self.builder_config))}

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
    """Passage records per language (the first ``max_passages`` by passage id), prepared through TFDS in
    ``tfds_dir`` from ``source_dir`` (a folder like shared/data; None: downloaded from the FLORES source)."""
    builder = Flores200(languages=languages, source_dir=source_dir, data_dir=tfds_dir)
    builder.download_and_prepare()
    passages: dict[str, list[dict[str, Any]]] = {code: [] for code in languages}
    for record in read_records(builder, "devtest"):
        passages[record["language"]].append(record)
    return {code: sorted(rows, key=lambda r: r["passage_id"])[:max_passages] for code, rows in passages.items()}
