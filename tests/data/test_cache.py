"""The project's JSON cache files (cellseg_d2.data.cache): keys, fingerprints, safe writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cellseg_d2.data.cache import fingerprint, is_cache_file, read_cache, write_cache
from cellseg_d2.errors import CellDataError


def test_fingerprint_follows_name_size_and_mtime(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    a.write_bytes(b"12345")
    b.write_bytes(b"xyz")
    first = fingerprint(tmp_path, [a, b])
    assert fingerprint(tmp_path, [a, b]) == first
    assert fingerprint(tmp_path, [b, a]) != first
    stat = a.stat()
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    current = fingerprint(tmp_path, [a, b])
    assert current != first
    moved = tmp_path / "moved"  # a moved dataset keeps its cache: names are relative
    moved.mkdir()
    for path in (a, b):
        os.replace(path, moved / path.name)
    assert fingerprint(moved, [moved / "a.tif", moved / "b.tif"]) == current


def test_read_cache_needs_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / ".cellseg_cache" / "x.json"
    assert read_cache(path, {"v": 1}) is None
    write_cache(path, {"info": {"cellseg": {"v": 1, "extra": 2}}, "images": []})
    assert read_cache(path, {"v": 1}) == {"info": {"cellseg": {"v": 1, "extra": 2}}, "images": []}
    assert read_cache(path, {"v": 2}) is None
    assert is_cache_file(path)
    path.write_text("{not json")
    assert read_cache(path, {"v": 1}) is None and not is_cache_file(path)


def test_write_cache_never_replaces_a_user_file(tmp_path: Path) -> None:
    user = tmp_path / "instances_train.json"
    user.write_text(json.dumps({"images": [], "info": {"mine": True}}))
    before = user.read_bytes()
    with pytest.raises(CellDataError, match="instances_train.json: exists and was not written"):
        write_cache(user, {"info": {"cellseg": {}}})
    assert user.read_bytes() == before
