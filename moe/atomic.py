"""Outputs that appear whole or not at all, and output paths checked before any work starts.

- `atomic_path(path)`: a file written beside `path`, renamed over it when complete.
- `atomic_folder(path)`: a folder built beside `path` in a hidden ``.{name}.tmp-{host}-{pid}-{id}`` folder and
  swapped in when complete: the old folder is renamed aside (``.{name}.old-...``), the new one renamed in,
  then the old one deleted. Hidden folders that killed runs of this host left behind are cleaned up first;
  an old folder set aside by a run killed before its new folder came in is renamed back.
- `check_output_folder(path, ...)`: the errors a user can fix (a file in the way, a folder that may not be
  replaced, no write permission, an output inside its own source), naming the path as given.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

KINDS = ("tmp", "old")  # a folder being built; an old folder set aside during a swap


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


def _hidden(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_folders(path: Path) -> dict[str, list[Path]]:
    """Hidden tmp/old folders beside `path` left by runs of this host whose process is gone, by kind."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.({'|'.join(KINDS)})-(.+)-(\d+)-[0-9a-f]{{8}}")
    found: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    if not path.parent.is_dir():
        return found
    for sibling in path.parent.iterdir():
        m = pattern.fullmatch(sibling.name)
        if m and m[2] == socket.gethostname() and not _alive(int(m[3])):
            found[m[1]].append(sibling)
    return found


def clean_stale(path: str | Path) -> None:
    """Remove what killed runs left beside `path`; restore an old folder whose replacement never came in."""
    path = Path(path).absolute()
    stale = stale_folders(path)
    if stale["old"] and not os.path.lexists(path):
        os.rename(stale["old"].pop(), path)
    for folder in stale["tmp"] + stale["old"]:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A hidden folder beside `path` to build in; swapped in for `path` (replacing any old one) on success,
    removed on failure. Call `check_output_folder` first: this replaces whatever `path` holds."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    build = _hidden(path, "tmp")
    build.mkdir()
    try:
        yield build
        if os.path.lexists(path):
            aside = _hidden(path, "old")
            os.rename(path, aside)
            os.rename(build, path)
            shutil.rmtree(aside)
        else:
            os.rename(build, path)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_folder(path: str | Path, *, may_exist: bool, source: str | Path | None = None) -> Path:
    """Check, before any work, that `path` can be written as an output folder; return it.

    What killed runs left beside it is cleaned up first (`clean_stale`), so the check sees the folder as it
    really is. Raises FileExistsError if it exists and `may_exist` is False or it is not a folder,
    PermissionError if the folder (or its nearest existing parent) is not writable, ValueError if it is,
    lies inside or contains `source`. Messages name `path` as given.
    """
    given = Path(path)
    clean_stale(given)
    if os.path.lexists(given):
        if not given.is_dir():
            raise FileExistsError(f"{given} is a file, not a folder: choose another output folder")
        if not may_exist:
            raise FileExistsError(f"{given} already exists: choose another output folder, or replace it "
                                  "(--overwrite, overwrite=True)")
    if source is not None:
        out, src = given.resolve(), Path(source).resolve()
        if _inside(out, src) or _inside(src, out):
            relation = "is" if out == src else "lies inside" if _inside(out, src) else "contains"
            raise ValueError(f"output folder {given} {relation} the source {source}: choose a folder outside it")
    existing = given.absolute()
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise FileExistsError(f"cannot create {given}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {given}: {existing} is not writable")
    return given
