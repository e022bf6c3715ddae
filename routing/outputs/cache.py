"""What is kept between runs: the cache folder (and the prepared data sets in it), and content keys that tie
cached results to their inputs.

``content_key(files)`` digests the names and the bytes of a set of files (SHA-256, streamed in 1 MiB
chunks), so whatever is keyed by it (resumable results, prepared data sets) changes when any byte of any
file changes and at no other time. Each file's digest is remembered under ``cache_dir/file-digests``, keyed by
the file's resolved path, size, inode and modification and change times, so a rerun over unchanged files
reads none of them; a copy that keeps the old modification time still gets a new change time.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from moe.atomic import atomic_path

CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$MOE_ROUTING_CACHE``, else ``moe-routing`` in the user cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    if os.environ.get("MOE_ROUTING_CACHE"):
        return Path(os.environ["MOE_ROUTING_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moe-routing"


def default_tfds_dir() -> Path:
    """Where prepared data sets go unless a folder is given: ``$MOE_TFDS_DIR``, else ``tfds`` in
    ``default_cache_dir()``."""
    return Path(os.environ.get("MOE_TFDS_DIR") or default_cache_dir() / "tfds")


def file_digest(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """SHA-256 (hex) of a file's bytes, read once per version of the file (see the module docstring)."""
    path = Path(path).resolve()
    stat = path.stat()
    identity = f"{path}\0{stat.st_size}\0{stat.st_ino}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"
    entry = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "file-digests" / \
        hashlib.sha256(identity.encode()).hexdigest()
    try:
        cached = entry.read_text().strip()
    except OSError:
        cached = ""
    if len(cached) == 64:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    try:
        with atomic_path(entry) as temp:
            temp.write_text(digest.hexdigest())
    except OSError:  # an unwritable cache only costs a rehash next time
        pass
    return digest.hexdigest()


def content_key(files: Mapping[str, str | Path], cache_dir: str | Path | None = None) -> str:
    """SHA-256 (hex) over ``{name: path}``: each name with the digest of its file's bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{file_digest(files[name], cache_dir)}\n".encode())
    return digest.hexdigest()
