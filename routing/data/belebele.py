"""BELEBELE multiple-choice reading comprehension, in the SEA-HELM reformatted layout, as a TFDS builder."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from routing.data.languages import flores_code
from routing.data.source import SourceBuilder, read_jsonl

LETTERS = "ABCD"


def belebele_record(row: dict[str, Any], language: str) -> dict[str, Any]:
    """One source row (``prompts[0]`` holds text/question/choice1..4; label 0-3 or a letter) as a record."""
    prompt = row["prompts"][0]
    label = row["label"]
    if isinstance(label, str):
        if label not in LETTERS:
            raise ValueError(f"BELEBELE label {label!r} of id {row['id']} is neither 0-3 nor A-D")
        label = LETTERS.index(label)
    return {"id": int(row["id"]), "language": language, "passage": prompt["text"],
            "question": prompt["question"], "choices": [prompt[f"choice{i}"] for i in range(1, 5)],
            "label": int(label)}


def belebele_languages(source_dir: str | Path) -> dict[str, str]:
    """FLORES code -> BELEBELE file code (``"zho_Hans"`` -> ``"zh-s"``) of every test file in
    ``source_dir/belebele`` (a folder laid out like shared/data); FileNotFoundError if there is none."""
    folder = Path(source_dir) / "belebele"
    stems = sorted(path.name.removesuffix(".jsonl") for path in folder.glob("*.jsonl")
                   if not path.name.endswith(".examples.jsonl"))
    if not stems:
        raise FileNotFoundError(f"no BELEBELE files ({{code}}.jsonl) in {folder}")
    return {flores_code(stem): stem for stem in stems}


class Belebele(SourceBuilder):
    """BELEBELE from ``belebele/{code}.jsonl`` (split "test") and ``{code}.examples.jsonl`` (split "fewshot").

    Records: id (alignment key), language (FLORES code: ``zh-s`` -> ``zho_Hans``), passage, question,
    choices (4 strings), label (0-3; the few-shot files' letters are converted). Every language file in
    the folder is prepared. In the shared copy, en id km lo ms my ta th vi zh-s zh-t share the same 895
    ids with the same choice order; jv and su hold a 280-question subset under the same ids but with the
    choices reordered (compare per question, not per choice index); tl's ids are not aligned to the rest.

    No download path: this layout is published only as the gated Hugging Face data set
    ``aisingapore/NLU-Belebele-MCQA``, so ``source_dir`` is required.
    """

    name = "belebele_mcqa"
    DESCRIPTION = "BELEBELE multiple choice, aligned across languages by id."
    HOMEPAGE = "https://github.com/facebookresearch/belebele"

    def _features(self) -> dict[str, Any]:
        text = tfds.features.Text()
        return {"id": np.int32, "language": text, "passage": text, "question": text,
                "choices": tfds.features.Sequence(text, length=4), "label": np.int32}

    def source_files(self, config: None) -> list[str]:
        """Each language's test file, then the few-shot files in the same order."""
        test = [rel for rel in self._source_glob("belebele", "*.jsonl") if not rel.endswith(".examples.jsonl")]
        return test + [rel.removesuffix(".jsonl") + ".examples.jsonl" for rel in test]

    def summary(self) -> str:
        return f"test and fewshot, {len(self.source_files(None)) // 2} languages"

    def _splits(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        paths = self._locate(dl_manager)
        fewshot = {rel: path for rel, path in paths.items() if rel.endswith(".examples.jsonl")}
        return {"test": self._generate_examples([path for rel, path in paths.items() if rel not in fewshot]),
                "fewshot": self._generate_examples(list(fewshot.values()))}

    def _generate_examples(self, paths: list[Path]) -> Iterator[tuple[str, dict]]:
        for path in paths:
            language = flores_code(path.name.split(".")[0])
            for row in read_jsonl(path):
                record = belebele_record(row, language)
                yield f"{language}/{record['id']}", record
