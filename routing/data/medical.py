"""Medical data as TFDS builders: MMLU medical multiple choice (English + translations) and MedInstruct."""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from routing.data.languages import flores_code
from routing.data.source import SourceBuilder, read_jsonl

ENGLISH_MCQ = "medical/mmlu_medical_en.jsonl"
MEDINSTRUCT = "medical/medinstruct_test.jsonl"
MEDINSTRUCT_URL = "https://raw.githubusercontent.com/XZhang97666/AlpaCare/master/data/MedInstruct-test.jsonl"
LETTERS = "ABCD"
_OPTION = re.compile(r"^\(([A-D])\)\s?", re.MULTILINE)

DROPPED_ROWS: dict[str, tuple[int, ...]] = {"ar": (817,)}
"""English row indices missing from a translated file (short code -> rows). The Arabic file has 1088 rows:
English row 817 (a 67-year-old woman after a pulmonary embolism) has no translation, so Arabic row 817
translates English row 818. The answer letters alone cannot place the gap (rows 817 and 818 both have
answer C); the question texts do. Each aligned pair is checked to carry the same answer letter."""


def parse_options(options: str) -> list[str]:
    """``"(A) x\\n(B) y\\n(C) z\\n(D) w"`` -> ``["x", "y", "z", "w"]``; ValueError unless exactly A-D in order."""
    parts = _OPTION.split(options)
    letters, texts = parts[1::2], parts[2::2]
    if "".join(letters) != LETTERS or parts[0].strip():
        raise ValueError(f"options are not '(A) .. (D) ..' lines: {options[:120]!r}")
    return [text.strip() for text in texts]


def letter_label(answer: str) -> int:
    """``"(C)"``, ``"c"`` or ``"C"`` -> 2."""
    letter = answer.strip().strip("()").upper()
    if len(letter) != 1 or letter not in LETTERS:
        raise ValueError(f"answer {answer!r} is not one of A-D")
    return LETTERS.index(letter)


def english_mcq(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """English records (id = row index) from the medLLM_QA_benchmark layout."""
    records = []
    for index, row in enumerate(rows):
        if len(row["choices"]) != 4 or len(row["answer"]) != 1:
            raise ValueError(f"{ENGLISH_MCQ} row {index}: expected 4 choices and one answer")
        records.append({"id": index, "language": "eng_Latn", "question": row["problem_text"],
                        "choices": list(row["choices"]), "label": letter_label(row["answer"][0])})
    return records


def translated_mcq(rows: list[dict[str, Any]], code: str, english: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of a translated file aligned to the English ids (skipping ``DROPPED_ROWS[code]``)."""
    ids = [index for index in range(len(english)) if index not in DROPPED_ROWS.get(code, ())]
    if len(rows) != len(ids):
        raise ValueError(f"mmlu_medical_{code}.json has {len(rows)} rows; aligning to {len(english)} English "
                         f"rows without {DROPPED_ROWS.get(code, ())} needs {len(ids)}")
    language = flores_code(code)
    records = []
    for index, row in zip(ids, rows):
        label = letter_label(row["answer"])
        if label != english[index]["label"]:
            raise ValueError(f"mmlu_medical_{code}.json: row aligned to English id {index} answers "
                             f"{LETTERS[label]}, English answers {LETTERS[english[index]['label']]}")
        records.append({"id": index, "language": language, "question": row["question"],
                        "choices": parse_options(row["options"]), "label": label})
    return records


class MedicalMcq(SourceBuilder):
    """MMLU medical subjects: ``medical/mmlu_medical_en.jsonl`` and every ``mmlu_medical_{code}.json``.

    Split "test"; records: id (English row index, the alignment key), language (FLORES code), question,
    choices (4 strings), label (0-3). Translations are aligned by order, with known gaps in
    ``DROPPED_ROWS`` (Arabic lacks English row 817), and checked answer by answer against English.
    No download path (the English file comes from aistairc/medLLM_QA_benchmark, the translations from
    FreedomIntelligence's XMedBench); ``source_dir`` is required.
    """

    name = "mmlu_medical_mcq"
    DESCRIPTION = "MMLU medical multiple choice, aligned across languages by id."
    HOMEPAGE = "https://github.com/FreedomIntelligence/Apollo"

    def _features(self) -> dict[str, Any]:
        text = tfds.features.Text()
        return {"id": np.int32, "language": text, "question": text,
                "choices": tfds.features.Sequence(text, length=4), "label": np.int32}

    def source_files(self, config: None) -> list[str]:
        return [ENGLISH_MCQ, *self._source_glob("medical", "mmlu_medical_*.json", allow_empty=True)]

    def _splits(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {"test": self._generate_examples(self._locate(dl_manager))}

    def _generate_examples(self, paths: dict[str, Path]) -> Iterator[tuple[str, dict]]:
        english = english_mcq(read_jsonl(paths[ENGLISH_MCQ]))
        records = list(english)
        for rel, path in paths.items():
            if rel != ENGLISH_MCQ:
                code = path.name.removeprefix("mmlu_medical_").removesuffix(".json")
                records += translated_mcq(json.loads(path.read_text(encoding="utf-8")), code, english)
        for record in records:
            yield f"{record['language']}/{record['id']}", record


@dataclasses.dataclass(eq=False)
class MedInstructConfig(tfds.core.BuilderConfig):
    """``answer_field``: which reference answer of MedInstruct-test becomes ``output``."""

    answer_field: str = "claude-2"


class MedInstruct(SourceBuilder):
    """AlpaCare MedInstruct-test, English medical instructions with reference answers.

    Split "test"; records: id, instruction, input ("" when the row has none), output. The file carries
    answers by four models; the config picks one: "claude-2" (default; complete in all but 6 rows),
    "gpt-4", "gpt-3.5-turbo" (cut off mid-sentence in over half the rows), "text-davinci-003".
    """

    name = "medinstruct"
    DESCRIPTION = "AlpaCare MedInstruct-test medical instructions."
    HOMEPAGE = "https://github.com/XZhang97666/AlpaCare"
    SOURCE_URLS = {MEDINSTRUCT: MEDINSTRUCT_URL}
    BUILDER_CONFIGS = [
        MedInstructConfig(name=model, answer_field=field, description=f"output = the {model} reference answer")
        for model, field in (("claude-2", "claude-2"), ("gpt-4", "gpt-4-answer"),
                             ("gpt-3.5-turbo", "gpt-3.5-turbo-answer"),
                             ("text-davinci-003", "text-davinci-003-answer"))
    ]

    def _features(self) -> dict[str, Any]:
        text = tfds.features.Text()
        return {"id": np.int32, "instruction": text, "input": text, "output": text}

    def _splits(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {"test": self._generate_examples(self._locate(dl_manager)[MEDINSTRUCT])}

    def _generate_examples(self, path: Path) -> Iterator[tuple[int, dict]]:
        field = self.builder_config.answer_field
        for row in read_jsonl(path):
            yield row["id"], {"id": row["id"], "instruction": row["instruction"], "input": row.get("input", ""),
                              "output": row[field]}
