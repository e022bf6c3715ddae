"""Atomic output folders: swapped in whole, never half-written, stale leftovers of killed runs cleaned up."""
import os
import socket
import subprocess
import sys

import pytest

from moe.atomic import atomic_folder, check_output_folder, clean_stale


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _leftover(out, kind: str, pid: int):
    folder = out.with_name(f".{out.name}.{kind}-{socket.gethostname()}-{pid}-0123abcd")
    folder.mkdir()
    (folder / "part").write_text(kind)
    return folder


def test_swap_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old_only.txt").write_text("old")
    with atomic_folder(out) as build:
        assert build.parent == out.parent and build.name.startswith(".report.tmp-") and build.is_dir()
        (build / "new.txt").write_text("new")
        assert (out / "old_only.txt").is_file()  # the old folder stays whole until the end
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_failure_keeps_the_old_folder_and_leaves_nothing(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out) as build:
            (build / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_leftovers_of_dead_runs_are_cleaned_and_a_set_aside_folder_restored(tmp_path):
    out, dead = tmp_path / "model", _dead_pid()
    old = _leftover(out, "old", dead)  # killed between "rename old aside" and "rename new in"
    _leftover(out, "tmp", dead)
    live = _leftover(out, "tmp", os.getpid())  # a run still going: never touched
    other_host = out.with_name(f".model.tmp-otherhost-{dead}-0123abcd")
    other_host.mkdir()
    clean_stale(out)
    assert (out / "part").read_text() == "old" and not old.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", live.name, other_host.name])
    _leftover(out, "old", dead)  # killed after the new folder came in: the old copy is only deleted
    clean_stale(out)
    assert (out / "part").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", live.name, other_host.name])


def test_check_output_folder(tmp_path):
    source = tmp_path / "ckpt"
    (source / "sub").mkdir(parents=True)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert check_output_folder(tmp_path / "new" / "deeper", may_exist=False) == tmp_path / "new" / "deeper"
    check_output_folder(source, may_exist=True)
    cases = [
        (dict(path=source, may_exist=False), FileExistsError, "already exists"),
        (dict(path=a_file, may_exist=True), FileExistsError, f"{a_file} is a file, not a folder"),
        (dict(path=a_file / "out", may_exist=True), FileExistsError, f"cannot create {a_file / 'out'}"),
        (dict(path=source, may_exist=True, source=source), ValueError, "is the source"),
        (dict(path=source / "sub" / "out", may_exist=True, source=source), ValueError, "lies inside the source"),
        (dict(path=tmp_path, may_exist=True, source=source), ValueError, "contains the source"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            check_output_folder(**kwargs)


def test_unwritable_parent_is_refused_exactly_when_writing_would_fail(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:
            (locked / "probe").mkdir()  # root writes anyway
            (locked / "probe").rmdir()
            writable = True
        except PermissionError:
            writable = False
        if writable:
            check_output_folder(locked / "out", may_exist=True)
        else:
            with pytest.raises(PermissionError, match=f"cannot write {locked / 'out'}: {locked} is not writable"):
                check_output_folder(locked / "out", may_exist=True)
    finally:
        locked.chmod(0o755)
