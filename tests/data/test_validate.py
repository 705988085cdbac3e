"""Dataset scanning and checking: what counts as a training folder or test image, which
oddities are warnings, and errors that name the file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.io import write_tiff
from cellseg_d2.data.validate import (
    DEFAULT_MIN_IMAGE_SIZE,
    TrainFolder,
    check_image_size,
    check_test_images,
    list_tiff_images,
    raise_if_strict,
    read_test_images,
    read_train_sample,
    scan_dataset,
)
from cellseg_d2.errors import CellDataError


def _image(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 100, np.uint8)


def _cells(height: int, width: int, value: int = 3) -> np.ndarray:
    labels = np.zeros((height, width), np.uint16)
    labels[2:6, 2:6] = value
    return labels


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """train/b (class1 + class3), train/a (class2), test_release/{y,x}.tif with the id map."""
    root = tmp_path / "cells"
    write_tiff(root / "train" / "b" / "image.tif", _image(20, 24))
    write_tiff(root / "train" / "b" / "class3.tif", _cells(20, 24, 7))
    write_tiff(root / "train" / "b" / "class1.tif", _cells(20, 24, 2))
    write_tiff(root / "train" / "a" / "image.tif", _image(18, 16))
    write_tiff(root / "train" / "a" / "class2.tif", _cells(18, 16))
    write_tiff(root / "test_release" / "y.tif", _image(21, 16))
    write_tiff(root / "test_release" / "x.tif", _image(17, 19))
    _write_id_map(
        root,
        [
            {"file_name": "y.tif", "id": 3, "height": 21, "width": 16},
            {"file_name": "x.tif", "id": 7, "height": 17, "width": 19},
        ],
    )
    return root


def _write_id_map(root: Path, entries: list[dict]) -> Path:
    path = root / "test_image_name_to_ids.json"
    path.write_text(json.dumps(entries))
    return path


# ---- scan_dataset ---------------------------------------------------------------------------


def test_scan_lists_folders_masks_and_test_images_sorted(root: Path) -> None:
    files = scan_dataset(root)
    assert files.root == root and files.warnings == []
    train = root / "train"
    assert files.train == [
        TrainFolder("a", train / "a" / "image.tif", ((1, train / "a" / "class2.tif"),)),
        TrainFolder(
            "b",
            train / "b" / "image.tif",
            ((0, train / "b" / "class1.tif"), (2, train / "b" / "class3.tif")),
        ),
    ]
    assert files.test_images == [root / "test_release" / "x.tif", root / "test_release" / "y.tif"]
    assert files.id_map == root / "test_image_name_to_ids.json"


def test_missing_root_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(CellDataError, match="not found"):
        scan_dataset(tmp_path / "nowhere")
    with pytest.raises(CellDataError, match="neither"):
        scan_dataset(tmp_path)


def test_harmless_oddities_are_warnings_naming_the_path(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (root / "train" / "notes.txt").write_text("x")
    (root / "train" / "a" / "readme.md").write_text("x")
    (root / "train" / "a" / "extra").mkdir()
    write_tiff(root / "train" / "empty" / "image.tif", _image(20, 20))
    (root / "train" / ".DS_Store").write_text("hidden: ignored silently")
    (root / "train" / "a" / ".class9.tif").write_text("hidden")
    (root / "test_release" / "list.csv").write_text("x")
    with caplog.at_level("WARNING", logger="cellseg_d2.data.validate"):
        files = scan_dataset(root)
    assert files.warnings == [
        f"{root / 'train' / 'a' / 'extra'}: unexpected folder inside a training image folder; "
        "ignored",
        f"{root / 'train' / 'a' / 'readme.md'}: not a TIFF; ignored",
        f"{root / 'train' / 'empty'}: no class1..4.tif mask; counted as an image without cells",
        f"{root / 'train' / 'notes.txt'}: not an image folder; ignored",
        f"{root / 'test_release' / 'list.csv'}: not a TIFF file; ignored",
    ]
    assert [f.name for f in files.train] == ["a", "b", "empty"]
    assert files.train[2].masks == ()
    assert [r.getMessage() for r in caplog.records] == files.warnings


def test_only_a_test_set_or_only_a_training_set(root: Path) -> None:
    os.rename(root / "train", root / "elsewhere")
    files = scan_dataset(root)
    assert files.train == [] and len(files.test_images) == 2
    assert files.warnings == [f"{root / 'train'}: folder not found; only the test set is available"]
    os.rename(root / "elsewhere", root / "train")
    os.rename(root / "test_release", root / "gone")
    files = scan_dataset(root)
    assert files.test_images is None and files.id_map == root / "test_image_name_to_ids.json"
    assert files.warnings == [
        f"{root / 'test_release'}: folder not found; the id map "
        f"{root / 'test_image_name_to_ids.json'} is not used"
    ]
    (root / "test_image_name_to_ids.json").unlink()
    files = scan_dataset(root)
    assert files.id_map is None and files.warnings == []


def test_empty_train_folder_warns(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    assert scan_dataset(tmp_path).warnings == [f"{tmp_path / 'train'}: no training images"]


@pytest.mark.parametrize(
    "mutate, class_names, expected",
    [
        (
            lambda r: (r / "train" / "a" / "image.tif").unlink(),
            ("p", "q", "r", "s"),
            "{root}/train/a/image.tif: file not found",
        ),
        (
            lambda r: write_tiff(r / "train" / "a" / "class5.tif", _cells(18, 16)),
            ("p", "q", "r", "s"),
            "{root}/train/a/class5.tif: mask of class 5, but DATASETS.CLASS_NAMES (or "
            "--class-names) lists only 4 class(es); add the missing names",
        ),
        (
            lambda r: None,  # class3.tif of b is beyond two names
            ("p", "q"),
            "{root}/train/b/class3.tif: mask of class 3, but DATASETS.CLASS_NAMES (or "
            "--class-names) lists only 2 class(es); add the missing names",
        ),
        (
            lambda r: write_tiff(r / "train" / "a" / "mask.TIF", _cells(18, 16)),
            ("p", "q", "r", "s"),
            "{root}/train/a/mask.TIF: unexpected TIFF name; a training folder holds image.tif "
            "and masks named class1.tif..class4.tif",
        ),
        (
            lambda r: (r / "test_image_name_to_ids.json").unlink(),
            ("p", "q", "r", "s"),
            "{root}/test_image_name_to_ids.json: file not found (needed for the images in "
            "{root}/test_release)",
        ),
    ],
    ids=["no image", "class5", "class3 of 2", "mask.tif", "no id map"],
)
def test_layout_errors_name_the_file(root: Path, mutate, class_names, expected: str) -> None:
    mutate(root)
    with pytest.raises(CellDataError) as info:
        scan_dataset(root, class_names)
    assert str(info.value) == expected.format(root=root)


def test_name_that_is_not_utf8_is_refused(root: Path) -> None:
    os.mkdir(os.fsencode(root / "train") + b"/bad\xff")
    with pytest.raises(CellDataError, match=r"bad\\udcff'?: the name is not valid UTF-8"):
        scan_dataset(root)


def test_list_tiff_images_rule(tmp_path: Path) -> None:
    for name in ("b.tif", "A.TIFF", "c.tiff", "d.png", ".hidden.tif"):
        (tmp_path / name).touch()
    (tmp_path / "sub.tif").mkdir()
    assert list_tiff_images(tmp_path) == [tmp_path / n for n in ("A.TIFF", "b.tif", "c.tiff")]
    warnings: list[str] = []
    list_tiff_images(tmp_path, warnings)
    assert warnings == [
        f"{tmp_path / 'd.png'}: not a TIFF file; ignored",
        f"{tmp_path / 'sub.tif'}: not a TIFF file; ignored",
    ]


# ---- reading pixels -------------------------------------------------------------------------


def test_read_train_sample_gives_size_and_int64_labels(root: Path) -> None:
    folder = scan_dataset(root).train[1]
    sample = read_train_sample(folder)
    assert (sample.height, sample.width) == (20, 24)
    assert [c for c, _ in sample.masks] == [0, 2]
    for (_, labels), value in zip(sample.masks, (2, 7)):
        assert labels.dtype == np.int64 and np.array_equal(labels, _cells(20, 24, value))


def test_read_train_sample_refuses_a_mask_of_another_size(root: Path) -> None:
    write_tiff(root / "train" / "b" / "class3.tif", _cells(20, 23))
    folder = scan_dataset(root).train[1]
    with pytest.raises(CellDataError) as info:
        read_train_sample(folder)
    assert str(info.value) == (
        f"{root / 'train' / 'b' / 'class3.tif'}: mask is 20x23 but "
        f"{root / 'train' / 'b' / 'image.tif'} is 20x24"
    )


def test_minimum_image_side(root: Path) -> None:
    assert DEFAULT_MIN_IMAGE_SIZE == 16
    check_image_size("x.tif", 16, 500, 16)
    with pytest.raises(CellDataError) as info:
        check_image_size("x.tif", 500, 15, 16)
    assert str(info.value) == "x.tif: image is 500x15 px, below the minimum side of 16 px"
    folder = scan_dataset(root).train[0]  # a: 18 x 16
    assert read_train_sample(folder, min_size=16).height == 18
    with pytest.raises(CellDataError, match=r"a/image\.tif: image is 18x16 px"):
        read_train_sample(folder, min_size=17)


def test_read_test_images_returns_entries_sorted_by_id(root: Path) -> None:
    entries = read_test_images(scan_dataset(root))
    assert [(e["id"], e["file_name"]) for e in entries] == [(3, "y.tif"), (7, "x.tif")]
    (root / "test_image_name_to_ids.json").unlink()
    os.rename(root / "test_release", root / "gone")
    with pytest.raises(CellDataError, match="test_release: no test set"):
        read_test_images(scan_dataset(root))


def test_check_test_images_against_the_id_map(root: Path) -> None:
    images = sorted((root / "test_release").iterdir())
    map_path = root / "test_image_name_to_ids.json"
    assert [e["id"] for e in check_test_images(map_path, images)] == [3, 7]
    with pytest.raises(CellDataError) as info:
        check_test_images(map_path, images[:1])  # y.tif not among the images
    assert str(info.value) == (
        f"{map_path}: names 1 file(s) not in {root / 'test_release'}, e.g. y.tif"
    )
    write_tiff(root / "test_release" / "z.tif", _image(20, 20))
    with pytest.raises(CellDataError) as info:
        check_test_images(map_path, sorted((root / "test_release").iterdir()))
    assert str(info.value) == (
        f"{root / 'test_release' / 'z.tif'}: test image missing from the id map {map_path} "
        "(1 such file(s))"
    )
    _write_id_map(root, [{"file_name": "x.tif", "id": 7, "height": 18, "width": 19}])
    with pytest.raises(CellDataError) as info:
        check_test_images(map_path, images[:1])
    assert str(info.value) == f"{images[0]}: image is 17x19 but {map_path} says 18x19"
    _write_id_map(root, [{"file_name": "x.tif", "id": 7, "height": 17, "width": 19}])
    with pytest.raises(CellDataError, match="below the minimum side of 18 px"):
        check_test_images(map_path, images[:1], min_size=18)


def test_check_test_images_decodes_only_when_asked(root: Path) -> None:
    path = root / "test_release" / "x.tif"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    write_tiff(path, noise, compression="zlib")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # header intact, data cut
    _write_id_map(root, [{"file_name": "x.tif", "id": 7, "height": 64, "width": 64}])
    map_path = root / "test_image_name_to_ids.json"
    assert [e["id"] for e in check_test_images(map_path, [path])] == [7]  # header only
    with pytest.raises(CellDataError, match=re.escape(f"{path}: unreadable TIFF")):
        check_test_images(map_path, [path], decode=True)


# ---- --strict -------------------------------------------------------------------------------


def test_raise_if_strict_lists_every_warning() -> None:
    raise_if_strict(["a: odd"], strict=False)
    raise_if_strict([], strict=True)
    with pytest.raises(CellDataError) as info:
        raise_if_strict(["a: odd", "b: odd too"], strict=True)
    assert str(info.value) == ("2 warning(s) treated as errors (--strict):\n  a: odd\n  b: odd too")
