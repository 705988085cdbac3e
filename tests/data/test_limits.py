"""Caps of cellseg_d2.data.limits: sizes, detections per id map, and instances per image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.config import get_cellseg_cfg
from cellseg_d2.data import (
    convert,
    load_train_coco,
    register_cell_datasets,
    register_cell_datasets_from_config,
)
from cellseg_d2.data.io import write_tiff
from cellseg_d2.data.limits import (
    DEFAULT_MAX_INSTANCES_PER_IMAGE,
    MAX_DETECTIONS_ENV,
    MAX_ID_MAP_MB_ENV,
    PIXELS_PER_DETECTION,
    check_cached_instances,
    check_instance_count,
    check_max_instances,
    count_instance_ids,
    max_id_map_bytes,
    max_submission_entries,
    read_bytes_bounded,
)
from cellseg_d2.errors import CellDataError
from tests.conftest import REPO_ROOT, load_tool
from tests.data.tiny_dataset import bump_mtime, make_dataset

PREPARE = REPO_ROOT / "tools" / "prepare_dataset.py"


def _entries(*sizes: tuple[int, int]) -> list[dict]:
    return [
        {"file_name": f"{i}.tif", "id": i, "height": h, "width": w}
        for i, (h, w) in enumerate(sizes)
    ]


def test_submission_entries_follow_the_id_map(monkeypatch: pytest.MonkeyPatch) -> None:
    small = _entries((10, 10), (20, 30))
    assert max_submission_entries(small) == 2 * 10_000
    big = _entries((4096, 4096))  # one detection per 256 px is more than 10,000
    assert max_submission_entries(big) == 4096 * 4096 // PIXELS_PER_DETECTION
    monkeypatch.setenv(MAX_DETECTIONS_ENV, "7")
    assert max_submission_entries(small) == 14
    for bad in ("0", "-3", "2.5", "many", "nan"):
        monkeypatch.setenv(MAX_DETECTIONS_ENV, bad)
        with pytest.raises(CellDataError, match=MAX_DETECTIONS_ENV):
            max_submission_entries(small)


def test_read_bytes_bounded_refuses_from_the_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:
        handle.truncate(2 * 2**30)  # a sparse 2 GiB file: reading it whole would take seconds
    with pytest.raises(CellDataError) as error:
        read_bytes_bounded(path, max_id_map_bytes(), "an id map", MAX_ID_MAP_MB_ENV)
    message = str(error.value)
    assert "big.json" in message and f"{2 * 2**30} bytes" in message
    assert "16 MiB" in message and MAX_ID_MAP_MB_ENV in message
    small = tmp_path / "small.json"
    small.write_bytes(b"[1, 2]")
    assert read_bytes_bounded(small, 6, "x", "ENV") == b"[1, 2]"
    with pytest.raises(CellDataError, match="small.json: 6 bytes"):
        read_bytes_bounded(small, 5, "x", "ENV")
    monkeypatch.setenv(MAX_ID_MAP_MB_ENV, "0.5")
    assert max_id_map_bytes() == 2**19
    monkeypatch.setenv(MAX_ID_MAP_MB_ENV, "lots")
    with pytest.raises(CellDataError, match=MAX_ID_MAP_MB_ENV):
        max_id_map_bytes()


def test_count_instance_ids_is_cheap_below_the_limit_and_exact_above() -> None:
    labels = np.zeros((6, 7), np.int64)
    labels[0, :5] = [1, 2, 3, 4, 5]
    assert count_instance_ids(labels, 10) == 5
    labels[1, 0] = 1000  # sparse: six ids, the largest 1000
    assert count_instance_ids(labels, 10) == 6
    assert count_instance_ids(labels, 3) == 6
    assert count_instance_ids(np.zeros((0, 0), np.int64), 3) == 0
    no_background = np.arange(1, 43).reshape(6, 7) * 100
    assert count_instance_ids(no_background, 10) == 42


def test_instance_cap_messages_and_values() -> None:
    check_instance_count("m.tif", 10, 10)
    with pytest.raises(CellDataError) as error:
        check_instance_count("m.tif", 11, 10, "counted twice")
    message = str(error.value)
    assert message.startswith("m.tif: 11 instance ids (counted twice)")
    assert "10 allowed" in message and "DATASETS.MAX_INSTANCES_PER_IMAGE" in message
    assert check_max_instances(np.int64(5)) == 5
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(CellDataError, match="MAX_INSTANCES_PER_IMAGE"):
            check_max_instances(bad)
    assert get_cellseg_cfg().DATASETS.MAX_INSTANCES_PER_IMAGE == DEFAULT_MAX_INSTANCES_PER_IMAGE


def test_check_cached_instances_names_the_fullest_image(tmp_path: Path) -> None:
    coco = {
        "images": [
            {"id": 1, "file_name": "train/a/image.tif"},
            {"id": 2, "file_name": "train/b/image.tif"},
        ],
        "annotations": [{"image_id": 2}] * 4 + [{"image_id": 1}] * 3,
    }
    check_cached_instances(coco, tmp_path, 4)
    check_cached_instances({"images": [], "annotations": []}, tmp_path, 1)
    with pytest.raises(CellDataError) as error:
        check_cached_instances(coco, tmp_path, 2)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'train' / 'b'}: 4 instance ids")
    assert "2 image(s) over the limit" in message and "2 allowed" in message


# ---- the cap at dataset preparation (issue 16, item 10) ---------------------------------------


def _many_ids(shape: tuple[int, int], count: int) -> np.ndarray:
    """A float mask (like the real data) with ``count`` one-pixel instances, ids 1..count."""
    labels = np.zeros(shape, np.float64)
    labels.flat[:count] = np.arange(1, count + 1)
    return labels


@pytest.fixture
def prepared(tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    """The tiny dataset (tests/data/tiny_dataset.py), its cache built by the tool."""
    root = make_dataset(tmp_path / "cells")
    assert load_tool(PREPARE).main(["--root", str(root)]) == 0
    capsys.readouterr()
    return root


def _refused(root: Path, capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run the tool: exit 2, no traceback, the earlier cache byte-identical; the message."""
    cache = root / convert.CACHE_DIR / "instances_train.json"
    before = cache.read_bytes()
    assert load_tool(PREPARE).main(["--root", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert cache.read_bytes() == before
    return err


def test_a_mask_with_too_many_ids_is_refused_before_encoding(
    prepared: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    mask = prepared / "train" / "b" / "class2.tif"
    write_tiff(mask, _many_ids((18, 16), 40))
    bump_mtime(mask)

    encode = convert.label_image_to_instances

    def encode_below_cap(labels: np.ndarray) -> list:
        assert labels.max() <= 30, "a mask above the cap was encoded"
        return encode(labels)

    monkeypatch.setattr(convert, "label_image_to_instances", encode_below_cap)
    err = _refused(prepared, capsys, "--max-instances", "30")
    assert f"{mask}: 40 instance ids" in err and "30 allowed" in err
    assert "--max-instances" in err


def test_the_cap_counts_all_masks_of_an_image(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = prepared / "train" / "a"
    write_tiff(folder / "class1.tif", _many_ids((20, 24), 6))
    write_tiff(folder / "class3.tif", _many_ids((20, 24), 5))
    bump_mtime(folder / "class1.tif")
    err = _refused(prepared, capsys, "--max-instances", "10")
    assert f"{folder}: 11 instance ids (all masks together: class1.tif 6, class3.tif 5)" in err
    assert load_tool(PREPARE).main(["--root", str(prepared), "--max-instances", "11"]) == 0


def test_a_cache_built_under_a_larger_cap_is_checked_again(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    # Image a keeps 3 instances (one of its 4 ids is below min_area); b keeps 1.
    assert len(load_train_coco(prepared, max_instances=3)["images"]) == 2
    err = _refused(prepared, capsys, "--max-instances", "2")
    assert f"{prepared / 'train' / 'a'}: 3 instance ids (cached" in err
    # Registration loads the cache, so the lower cap stops it there (nothing registered).
    with pytest.raises(CellDataError, match="3 instance ids"):
        register_cell_datasets(prepared, prefix="t_cap", val_fraction=0.0, max_instances=2)
    with pytest.raises(CellDataError, match="MAX_INSTANCES_PER_IMAGE"):
        register_cell_datasets(prepared, prefix="t_cap", max_instances=0)
    cfg = get_cellseg_cfg()
    cfg.merge_from_list(
        ["DATASETS.CELLS_ROOT", str(prepared), "DATASETS.MAX_INSTANCES_PER_IMAGE", 2]
        + ["MODEL.ROI_HEADS.NUM_CLASSES", 4]
    )
    with pytest.raises(CellDataError, match="3 instance ids .* 2 allowed"):
        register_cell_datasets_from_config(cfg, prefix="t_cfg")


def test_prepare_tool_refuses_a_bad_cap_value(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_tool(PREPARE).main(["--root", str(tmp_path), "--max-instances", "0"])
    assert exit_info.value.code == 2
    assert "--max-instances" in capsys.readouterr().err


def test_a_file_that_grows_after_its_size_was_read_is_still_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing.json"
    path.write_bytes(b"x" * 5000)
    real_fstat = os.fstat

    class Small:
        st_size = 10  # what the size was when fstat looked

    monkeypatch.setattr(os, "fstat", lambda fd: Small())
    assert read_bytes_bounded(path, 5000, "x", "ENV") == b"x" * 5000
    with pytest.raises(CellDataError, match="growing.json: the data read is more than"):
        read_bytes_bounded(path, 4999, "x", "ENV")
    monkeypatch.setattr(os, "fstat", real_fstat)
