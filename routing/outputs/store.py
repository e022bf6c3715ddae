"""Per-language results on disk, each tagged with the settings it was computed under, so runs resume.

`LanguageStore` keeps a language's `CorpusRouting` as ``{folder}/{language}.npz``; `ItemStore` keeps a
language's evaluated items as ``{folder}/{language}.json``. Both check stored settings against the current
ones, so a result computed with another model, other inputs or other options is never reused silently
(StaleResultError naming the file and the settings that differ; also for a file that cannot be read whole).
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moe.atomic import atomic_path
from routing.eval.results import ItemResult
from routing.outputs.files import StaleResultError, settings_difference, write_json
from routing.stats import CorpusRouting

ARRAYS = ("q", "counts", "lengths", "entropy", "consistency")


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

    def check(self, language: str, settings: Mapping[str, Any], ignore: Sequence[str] = ()) -> bool:
        """True if `language` is stored under `settings` (the keys in `ignore` aside), False if not stored;
        StaleResultError otherwise (other settings, or a file that cannot be read)."""
        stored = self.settings(language)
        if stored is None:
            return False
        changed = settings_difference({k: v for k, v in stored.items() if k not in ignore}, settings)
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


class ItemStore:
    """Per-language evaluated items (``{folder}/{language}.json``), each file tagged with its settings."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, language: str) -> Path:
        return self.folder / f"{language}.json"

    def load(self, language: str, settings: Mapping[str, Any]) -> list[ItemResult] | None:
        """The stored items of ``language``, None if not stored; StaleResultError if scored under other settings."""
        if not self.path(language).is_file():
            return None
        stored = json.loads(self.path(language).read_text())
        changed = settings_difference(stored["settings"], settings)
        if changed:
            raise StaleResultError(f"{self.path(language)} was scored with other settings (" + "; ".join(changed)
                                   + "); pass --restart or choose another --out")
        return [ItemResult(**item) for item in stored["items"]]

    def save(self, language: str, items: list[ItemResult], settings: Mapping[str, Any]) -> None:
        """Store ``items`` atomically with their settings."""
        write_json(self.path(language), {"settings": dict(settings), "items": [dataclasses.asdict(i) for i in items]},
                   indent=None)
