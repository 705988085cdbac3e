"""Checks made on a file before it is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellseg_d2.errors import CellSegError
from cellseg_d2.utils.files import InputFileError, check_file_size


def test_check_file_size_accepts_small_regular_files(tmp_path: Path) -> None:
    path = tmp_path / "ids.json"
    path.write_bytes(b"[]" * 10)
    assert check_file_size(path, 20, "id map") == 20


def test_check_file_size_refuses_large_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:  # a sparse 2 GB file: nothing is written, nothing read
        handle.truncate(2 << 30)
    with pytest.raises(InputFileError, match=r"big\.json: the id map has 2,147,483,648 bytes"):
        check_file_size(path, 64 << 20, "id map")
    assert issubclass(InputFileError, CellSegError)


@pytest.mark.parametrize("kind", ["folder", "device", "missing"])
def test_check_file_size_refuses_what_is_not_a_file(tmp_path: Path, kind: str) -> None:
    path = {"folder": tmp_path, "device": Path("/dev/zero"), "missing": tmp_path / "no.json"}[kind]
    if kind == "device" and not path.exists():
        pytest.skip("no /dev/zero here")
    message = "cannot read" if kind == "missing" else "not a regular file"
    with pytest.raises(InputFileError, match=message):
        check_file_size(path, 1 << 20, "id map")
