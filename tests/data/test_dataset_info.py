"""``<root>/dataset.json``: written atomically, read back checked, every bad field named."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from cellseg_d2.data.dataset_info import (
    DATASET_INFO_NAME,
    DatasetInfo,
    read_dataset_info,
    write_dataset_info,
)
from cellseg_d2.errors import CellDataError


def test_dataset_info_round_trip_and_checks(tmp_path: Path) -> None:
    assert read_dataset_info(tmp_path) is None
    write_dataset_info(tmp_path, DatasetInfo(("a", "b"), 0.5, "coco"))
    assert read_dataset_info(tmp_path) == DatasetInfo(("a", "b"), 0.5, "coco")
    write_dataset_info(tmp_path, DatasetInfo(("a",)))
    assert json.loads((tmp_path / "dataset.json").read_text())["pixel_size_um"] is None
    for bad, message in [
        ({"class_names": ["a", "a"]}, "distinct"),
        ({"class_names": ["a"], "pixel_size_um": -1}, "positive"),
        ({"class_names": ["a"], "pixel_size_um": "0.5"}, "number or null"),
        ([1, 2], "JSON object"),
    ]:
        (tmp_path / "dataset.json").write_text(json.dumps(bad))
        with pytest.raises(CellDataError, match=message):
            read_dataset_info(tmp_path)


def test_written_file_is_indented_json_with_every_field(tmp_path: Path) -> None:
    path = write_dataset_info(tmp_path / "new", DatasetInfo(("tumour", "stroma"), 2, "qupath"))
    assert DATASET_INFO_NAME == "dataset.json"
    assert path == tmp_path / "new" / "dataset.json"
    expected = {
        "class_names": ["tumour", "stroma"],
        "pixel_size_um": 2.0,
        "source_format": "qupath",
    }
    assert path.read_text(encoding="utf-8") == json.dumps(expected, indent=2) + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["dataset.json"]  # no temporary left
    info = read_dataset_info(tmp_path / "new")
    assert info.pixel_size_um == 2.0 and isinstance(info.pixel_size_um, float)
    assert info.class_names == ("tumour", "stroma") and isinstance(info.class_names, tuple)


@pytest.mark.parametrize(
    "info, problem",
    [
        (DatasetInfo(("a", "a")), "class names must be distinct"),
        (DatasetInfo(()), "needs at least one class name"),
        (DatasetInfo(("a",), 0.0), "must be positive and finite, got 0.0"),
        (DatasetInfo(("a",), math.inf), "must be positive and finite, got inf"),
        (DatasetInfo(("a",), math.nan), "must be positive and finite, got nan"),
        (DatasetInfo(("a",), True), "must be a number or null, got True"),
    ],
)
def test_write_refuses_bad_fields_and_writes_nothing(
    tmp_path: Path, info: DatasetInfo, problem: str
) -> None:
    with pytest.raises(CellDataError) as caught:
        write_dataset_info(tmp_path, info)
    message = str(caught.value)
    assert str(tmp_path / "dataset.json") in message and problem in message, message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"pixel_size_um": 0.5}', "expected a JSON object with at least 'class_names'"),
        ('"class_names"', "expected a JSON object with at least 'class_names'"),
        ('{"class_names": ["a"], "source_format": 3}', "source_format must be a string or null"),
        ('{"class_names": "a,b"}', "class_names: expected a list of class names"),
        ('{"class_names": ["a", ""]}', "class_names: class names must be non-empty strings"),
        ('{"class_names": ["a"], "pixel_size_um": NaN}', "must be positive and finite, got nan"),
        ('{"class_names": ["a"], "pixel_size_um": false}', "must be a number or null, got False"),
        ('{"class_names": ["a"]', "unreadable JSON"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_read_refuses_bad_content_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(CellDataError) as caught:
        read_dataset_info(tmp_path)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "dataset.json")) and problem in message, message


def test_read_refuses_an_oversized_file_before_parsing(tmp_path: Path) -> None:
    limit = 1 << 20
    (tmp_path / "dataset.json").write_bytes(b'{"class_names": ["a"]}' + b" " * limit)
    with pytest.raises(CellDataError, match=f"bytes; a dataset.json holds at most {limit}"):
        read_dataset_info(tmp_path)


def test_read_defaults_and_ignores_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text('{"class_names": ["nucleus"], "note": "by hand"}')
    assert read_dataset_info(tmp_path) == DatasetInfo(("nucleus",), None, None)


def test_dataset_info_is_frozen() -> None:
    info = DatasetInfo(("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.pixel_size_um = 1.0  # type: ignore[misc]
