"""Grade-school math word problems as TFDS builders: GSM8K (English, worked solutions) and MGSM (parallel)."""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from routing.data.languages import flores_code
from routing.data.source import SourceBuilder, read_jsonl, read_lines

GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
MGSM_URL = "https://raw.githubusercontent.com/google-research/url-nlp/main/mgsm/mgsm_{code}.tsv"
MGSM_CODES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def parse_number(text: str) -> float:
    """A final answer such as ``"1,080"`` or ``"-3.5"`` as a float; ValueError for anything else."""
    cleaned = text.strip().replace(",", "")
    if not _NUMBER.fullmatch(cleaned):
        raise ValueError(f"not a plain number: {text!r}")
    return float(cleaned)


def gsm8k_final_answer(solution: str) -> float:
    """The number after the last ``####`` of a GSM8K worked solution."""
    if "####" not in solution:
        raise ValueError(f"GSM8K solution has no '####' final answer: {solution[-80:]!r}")
    return parse_number(solution.rsplit("####", 1)[1])


class Gsm8k(SourceBuilder):
    """GSM8K from ``gsm8k/{train,test}.jsonl`` (or the openai/grade-school-math repository).

    Splits "train" and "test"; records: id (row index), question, answer (the worked solution, ending in
    ``#### N``), answer_number (N as a float).
    """

    name = "gsm8k_math"
    DESCRIPTION = "GSM8K grade-school math with worked solutions."
    HOMEPAGE = "https://github.com/openai/grade-school-math"
    SOURCE_URLS = {f"gsm8k/{split}.jsonl": GSM8K_URL.format(split=split) for split in ("train", "test")}

    def _features(self) -> dict[str, Any]:
        text = tfds.features.Text()
        return {"id": np.int32, "question": text, "answer": text, "answer_number": np.float64}

    def _splits(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        paths = self._locate(dl_manager)
        return {split: self._generate_examples(paths[f"gsm8k/{split}.jsonl"]) for split in ("train", "test")}

    def _generate_examples(self, path: Path) -> Iterator[tuple[int, dict]]:
        for index, row in enumerate(read_jsonl(path)):
            yield index, {"id": index, "question": row["question"], "answer": row["answer"],
                          "answer_number": gsm8k_final_answer(row["answer"])}


class Mgsm(SourceBuilder):
    """MGSM from ``mgsm/mgsm_{code}.tsv`` (question TAB answer; or the google-research/url-nlp repository).

    Split "test"; records: id (row index, the alignment key across languages), language (FLORES code),
    question, answer_number (float). All 11 languages are prepared, 250 rows each.
    """

    name = "mgsm_math"
    DESCRIPTION = "MGSM: GSM8K test questions translated into 10 languages, row-aligned."
    HOMEPAGE = "https://github.com/google-research/url-nlp/tree/main/mgsm"
    SOURCE_URLS = {f"mgsm/mgsm_{code}.tsv": MGSM_URL.format(code=code) for code in MGSM_CODES}

    def _features(self) -> dict[str, Any]:
        text = tfds.features.Text()
        return {"id": np.int32, "language": text, "question": text, "answer_number": np.float64}

    def _splits(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        paths = self._locate(dl_manager)
        return {"test": self._generate_examples([(code, paths[f"mgsm/mgsm_{code}.tsv"]) for code in MGSM_CODES])}

    def _generate_examples(self, files: Sequence[tuple[str, Path]]) -> Iterator[tuple[str, dict]]:
        for code, path in files:
            language = flores_code(code)
            for index, line in enumerate(read_lines(path)):
                question, sep, answer = line.rpartition("\t")
                if not sep:
                    raise ValueError(f"{path}:{index + 1}: expected 'question<TAB>answer'")
                yield f"{language}/{index}", {"id": index, "language": language, "question": question,
                                              "answer_number": parse_number(answer)}
