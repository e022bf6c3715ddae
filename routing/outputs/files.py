"""Result files written atomically (``moe.atomic.atomic_path``): JSON and CSV; and the check that stored
results were computed under the current settings."""
from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moe.atomic import atomic_path


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> None:
    """Write ``data`` as JSON, atomically (NaN must already be replaced by None)."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=indent, allow_nan=False) + "\n", encoding="utf-8")


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as CSV, atomically: a header of the first row's keys, then one line per row."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


class StaleResultError(ValueError):
    """Stored results were computed under settings other than the current ones, or cannot be read."""


def settings_difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: stored -> current`` lines for every setting that differs."""
    return [f"{key}: {stored.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(stored) | set(current)) if stored.get(key) != current.get(key)]
