"""Data suites: the parallel data and language codes a pipeline runs on, chosen by name (``--data`` in the scripts).

- ``"real"`` (the default): FLORES-200 devtest passages, FLORES-200 codes (short codes accepted), reference
  ``eng_Latn``, the paper's languages by default; tasks MGSM, BELEBELE, medical. ``source_dir`` is a folder
  laid out like shared/data (None: FLORES is downloaded).
- ``"organism"``: the model organism's passages (``routing.data.organism``), its own codes, reference its base
  language, all its languages by default; task "organism". ``source_dir`` is the organism folder (the one
  holding organism.json; None: the built-in organism). A pipeline reads it from the model's own folder unless
  given another (`data_dir`): an organism's data ships beside its weights.

A suite answers every question a pipeline has about its data before any of it is prepared: which codes are
valid (`codes`, naming close matches), the reference, the default languages, whether the passage files are
there (`check_passages`); then it reads passages (`load_passages`). Tasks name their suite
(``routing.eval.tasks.Task.data``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe.builtin import builtin_path
from routing.data.flores import load_passages
from routing.data.languages import PAPER_LANGUAGES, REFERENCE, flores_language, flores_languages
from routing.data.organism import (load_organism_passages, organism_folder, organism_languages,
                                   validate_organism_languages)

Passages = dict[str, list[dict[str, Any]]]


def _data_folder(source_dir: str | Path | None) -> Path:
    """``source_dir`` as a Path; FileNotFoundError when there is none (the real data is read from a folder)."""
    if source_dir is None:
        raise FileNotFoundError("no data folder: pass one laid out like shared/data (--data-dir)")
    return Path(source_dir)


@dataclasses.dataclass(frozen=True)
class RealData:
    """FLORES-200 passages and codes (module docstring)."""

    name: str = "real"
    passages_name: str = "FLORES"  # in captions and the expert file's sequence counts
    passages_title: str = "FLORES-200 devtest"
    reference_name: str = "English"
    correlation_task: str = "belebele"

    def data_dir(self, source_dir: str | Path | None, model: str | Path) -> str | Path | None:
        """``source_dir`` as given (the real data do not come with a model)."""
        return source_dir

    def codes(self, languages: Sequence[str], source_dir: str | Path | None) -> tuple[str, ...]:
        """FLORES-200 codes of ``languages`` (FLORES or short codes), without repeats; ValueError naming close
        matches."""
        return tuple(dict.fromkeys(flores_language(code) for code in languages))

    def reference(self, source_dir: str | Path | None) -> str:
        return REFERENCE

    def default_languages(self, source_dir: str | Path | None) -> tuple[str, ...]:
        """The paper's languages with a FLORES devtest file in ``source_dir``."""
        devtest = _data_folder(source_dir) / "flores200" / "devtest"
        present = set(flores_languages(devtest.parent)) if devtest.is_dir() else set()
        chosen = tuple(code for code in PAPER_LANGUAGES if code in present)
        if not chosen:
            raise FileNotFoundError(f"none of the paper's languages has a devtest file in {devtest}")
        return chosen

    def check_passages(self, source_dir: str | Path | None, languages: Sequence[str]) -> None:
        """FileNotFoundError listing the FLORES files of ``languages`` that ``source_dir`` lacks (None: nothing to
        check, FLORES is downloaded)."""
        if source_dir is None:
            return
        flores = Path(source_dir) / "flores200"
        needed = [flores / "metadata_devtest.tsv", *(flores / "devtest" / f"{code}.devtest" for code in languages)]
        missing = [str(path) for path in needed if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"data folder {source_dir} lacks FLORES-200 files (expected a layout like "
                                    f"shared/data): {', '.join(missing)}")

    def load_passages(self, source_dir: str | Path | None, languages: Sequence[str], tfds_dir: str | Path | None,
                      max_passages: int | None) -> Passages:
        return load_passages(source_dir, languages, tfds_dir, max_passages)


@dataclasses.dataclass(frozen=True)
class OrganismData:
    """The organism's passages and codes (module docstring)."""

    name: str = "organism"
    passages_name: str = "organism"
    passages_title: str = "organism test passages"
    reference_name: str = "base"
    correlation_task: str = "organism"

    def data_dir(self, source_dir: str | Path | None, model: str | Path) -> Path:
        """``source_dir``, else the folder of ``model`` (a folder, or the built-in name "organism"), which holds
        the organism's organism.json beside its weights."""
        if source_dir is not None:
            return Path(source_dir)
        return builtin_path(model) or Path(model)

    def codes(self, languages: Sequence[str], source_dir: str | Path | None) -> tuple[str, ...]:
        """``languages`` without repeats if each is one of the organism's; ValueError naming close matches."""
        return validate_organism_languages(languages, source_dir)

    def reference(self, source_dir: str | Path | None) -> str:
        return organism_languages(source_dir)[0]

    def default_languages(self, source_dir: str | Path | None) -> tuple[str, ...]:
        return organism_languages(source_dir)

    def check_passages(self, source_dir: str | Path | None, languages: Sequence[str]) -> None:
        """FileNotFoundError (or ValueError) unless the folder holds a well-formed organism.json."""
        organism_languages(organism_folder(source_dir))

    def load_passages(self, source_dir: str | Path | None, languages: Sequence[str], tfds_dir: str | Path | None,
                      max_passages: int | None) -> Passages:
        return load_organism_passages(source_dir, languages, tfds_dir, max_passages)


DataSuite = RealData | OrganismData
SUITES: dict[str, DataSuite] = {suite.name: suite for suite in (RealData(), OrganismData())}


def get_suite(name: str) -> DataSuite:
    """The data suite called ``name``; ValueError naming the choices otherwise."""
    if name not in SUITES:
        raise ValueError(f"unknown data {name!r}; choose one of {tuple(SUITES)}")
    return SUITES[name]
