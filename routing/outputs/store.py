"""Results on disk: JSON written atomically and per-language routing summaries with a settings fingerprint.

A language's `CorpusRouting` is saved as ``{folder}/{language}.npz`` together with the settings it was
computed under (a JSON object). Loading checks those settings against the current ones, so a result
computed with another model, other inputs or other statistics options is never reused silently; a file
that cannot be read whole is refused the same way (StaleResultError naming it).
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moe.atomic import atomic_path
from routing.analysis import CorpusRouting

ARRAYS = ("q", "counts", "lengths", "entropy", "consistency")


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> None:
    """Write `data` as JSON, atomically (NaN must already be replaced by None)."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=indent, allow_nan=False) + "\n", encoding="utf-8")


class StaleResultError(ValueError):
    """Stored results were computed under settings other than the current ones."""


def settings_difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: stored -> current`` lines for every setting that differs."""
    return [f"{key}: {stored.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(stored) | set(current)) if stored.get(key) != current.get(key)]


class LanguageStore:
    """Per-language `CorpusRouting` files in one folder, each tagged with its settings."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, language: str) -> Path:
        return self.folder / f"{language}.npz"

    def _read(self, language: str) -> tuple[dict[str, Any], CorpusRouting]:
        """Settings and summaries of a stored language; StaleResultError naming the file if it is unreadable."""
        path = self.path(language)
        try:
            with np.load(path) as data:
                settings = json.loads(str(data["settings"]))
                keys = [tuple(key) for key in json.loads(str(data["keys"]))]
                corpus = CorpusRouting(keys, **{name: data[name] for name in ARRAYS})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise StaleResultError(f"{path} cannot be read ({type(err).__name__}: {err}); it is corrupt or "
                                   "partial: pass --restart to recompute it") from err
        if not isinstance(settings, dict):
            raise StaleResultError(f"{path} holds no settings object; pass --restart to recompute it")
        return settings, corpus

    def settings(self, language: str) -> dict[str, Any] | None:
        """The settings a stored language was computed under, or None if it is not stored."""
        return self._read(language)[0] if self.path(language).exists() else None

    def check(self, language: str, settings: Mapping[str, Any]) -> bool:
        """True if `language` is stored under `settings`, False if not stored; StaleResultError otherwise
        (other settings, or a file that cannot be read)."""
        stored = self.settings(language)
        if stored is None:
            return False
        changed = settings_difference(stored, settings)
        if changed:
            raise StaleResultError(f"{self.path(language)} was computed with other settings ("
                                   + "; ".join(changed) + ")")
        return True

    def save(self, language: str, corpus: CorpusRouting, settings: Mapping[str, Any]) -> None:
        """Store `corpus` atomically with its settings and alignment keys."""
        arrays = {name: getattr(corpus, name) for name in ARRAYS}
        with atomic_path(self.path(language)) as temp, temp.open("wb") as handle:
            np.savez(handle, settings=json.dumps(dict(settings), sort_keys=True),
                     keys=json.dumps([list(key) for key in corpus.keys]), **arrays)

    def load(self, language: str) -> CorpusRouting:
        """The stored `CorpusRouting` of `language` (keys back as tuples)."""
        return self._read(language)[1]

    def remove(self, language: str) -> None:
        self.path(language).unlink(missing_ok=True)
