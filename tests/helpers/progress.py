"""A stand-in for tqdm that records each bar's total and updates, and fails on a count beyond the total."""
from __future__ import annotations

from typing import Any


class RecordedBar:
    """One progress bar: its total, description and every update."""

    def __init__(self, total: int | None = None, desc: str | None = None, **_: Any) -> None:
        self.total, self.desc, self.updates, self.closed = total, desc, [], False

    @property
    def count(self) -> int:
        return sum(self.updates)

    def update(self, n: int = 1) -> None:
        self.updates.append(n)
        assert self.total is not None, f"bar {self.desc!r} has no total"
        assert self.count <= self.total, f"bar {self.desc!r} counted {self.count} of a total of {self.total}"

    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> RecordedBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Bars:
    """Call it as tqdm (monkeypatch a module's ``tqdm`` with it); ``bars`` holds every bar made."""

    def __init__(self) -> None:
        self.bars: list[RecordedBar] = []

    def __call__(self, *args: Any, **kwargs: Any) -> RecordedBar:
        bar = RecordedBar(**kwargs)
        self.bars.append(bar)
        return bar

    def finished(self) -> dict[str | None, tuple[int, int]]:
        """(count, total) of every bar by description; each must be closed, complete and end exactly at 100%."""
        for bar in self.bars:
            assert bar.closed and bar.count == bar.total, f"bar {bar.desc!r}: {bar.count} of {bar.total}"
        return {bar.desc: (bar.count, bar.total) for bar in self.bars}
