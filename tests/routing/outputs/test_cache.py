"""Content keys: they follow the bytes of the files, and a rerun over unchanged files reads none of them."""
import hashlib
import os

from routing.outputs.cache import content_key, file_digest


def test_digest_is_sha256_of_the_bytes_and_cached_by_file_identity(tmp_path):
    cache = tmp_path / "cache"
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00\x01" * 3_000_000)  # several read chunks
    assert file_digest(path, cache) == hashlib.sha256(path.read_bytes()).hexdigest()
    (entry,) = (cache / "file-digests").iterdir()
    entry.write_text("f" * 64)  # a rerun trusts the cache entry of an unchanged file: the file is not read
    assert file_digest(path, cache) == "f" * 64


def test_same_size_and_restored_mtime_still_count_as_changed(tmp_path):
    cache = tmp_path / "cache"
    path = tmp_path / "weights.bin"
    path.write_bytes(b"aaaa")
    stat = path.stat()
    first = file_digest(path, cache)
    path.write_bytes(b"bbbb")  # new weights of the same size, copied with the old modification time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_digest(path, cache) == hashlib.sha256(b"bbbb").hexdigest() != first


def test_content_key_follows_names_and_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("one")
    b.write_text("two")
    key = content_key({"x": a, "y": b}, tmp_path / "cache")
    assert content_key({"y": b, "x": a}, tmp_path / "cache") == key  # order does not matter
    assert content_key({"x": b, "y": a}, tmp_path / "cache") != key  # which file has which name does
    b.write_text("three")
    assert content_key({"x": a, "y": b}, tmp_path / "cache") != key


def test_unwritable_cache_only_costs_a_rehash(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    path = tmp_path / "w"
    path.write_bytes(b"w")
    assert file_digest(path, blocked) == hashlib.sha256(b"w").hexdigest()
