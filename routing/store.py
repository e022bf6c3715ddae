"""Results on disk: atomic file writes and per-language routing summaries with a settings fingerprint.

A language's `CorpusRouting` is saved as ``{folder}/{language}.npz`` together with the settings it was
computed under (a JSON object). Loading checks those settings against the current ones, so a result
computed with another model, other inputs or other statistics options is never reused silently.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from routing.analysis import CorpusRouting

ARRAYS = ("q", "counts", "lengths", "entropy", "consistency")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


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

    def settings(self, language: str) -> dict[str, Any] | None:
        """The settings a stored language was computed under, or None if it is not stored."""
        if not self.path(language).is_file():
            return None
        with np.load(self.path(language)) as data:
            return json.loads(str(data["settings"]))

    def check(self, language: str, settings: Mapping[str, Any]) -> bool:
        """True if `language` is stored under `settings`, False if not stored; StaleResultError otherwise."""
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
        with np.load(self.path(language)) as data:
            keys = [tuple(key) for key in json.loads(str(data["keys"]))]
            return CorpusRouting(keys, **{name: data[name] for name in ARRAYS})

    def remove(self, language: str) -> None:
        self.path(language).unlink(missing_ok=True)
