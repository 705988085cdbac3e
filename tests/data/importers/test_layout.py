"""Writing an imported dataset: image readers, staging, and the all-or-nothing DatasetWriter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellseg_d2.data.dataset_info import read_dataset_info
from cellseg_d2.data.importers import ImportOptions
from cellseg_d2.data.importers.common import ClassTable, ImportSummary
from cellseg_d2.data.importers.layout import (
    IMAGE_SUFFIXES,
    DatasetWriter,
    find_image,
    stage_image,
)
from cellseg_d2.data.io import read_image, read_instance_mask, read_tiff
from cellseg_d2.errors import CellDataError
from tests.importer_helpers import no_leftovers


def _gradient(height: int, width: int) -> np.ndarray:
    return (np.arange(height * width) % 251).astype(np.uint8).reshape(height, width)


# ---- reading source images ------------------------------------------------------------------


def test_find_image_first_folder_wins_and_duplicates_are_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    (second / "cell.png").touch()
    (first / "cell.TIFF").touch()
    (second / "other.jpeg").touch()
    assert find_image([first, second], "cell") == first / "cell.TIFF"
    assert find_image([second, first], "cell") == second / "cell.png"
    assert find_image([first, second], "other") == second / "other.jpeg"
    assert find_image([first, second], "none") is None
    (first / "cell.tif").touch()
    with pytest.raises(CellDataError) as info:
        find_image([first, second], "cell")
    message = str(info.value)
    assert str(first) in message and "cell.TIFF" in message and "cell.tif" in message
    assert ".tif" in IMAGE_SUFFIXES and ".png" in IMAGE_SUFFIXES


# ---- staging one image ----------------------------------------------------------------------


def test_stage_image_copies_a_tiff_byte_for_byte(tmp_path: Path) -> None:
    source = tmp_path / "src.tif"
    deep = (np.arange(20 * 30, dtype=np.uint16) * 97).reshape(20, 30)
    tifffile.imwrite(source, deep, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    dest = tmp_path / "out" / "train" / "x" / "image.tif"
    assert stage_image(source, dest, "src.tif") == (20, 30)
    assert dest.read_bytes() == source.read_bytes()


def test_stage_image_writes_other_files_and_arrays_as_tiff(tmp_path: Path) -> None:
    rgb = np.stack([_gradient(18, 22)] * 3, axis=2)
    rgb[..., 1] = 9
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert stage_image(tmp_path / "a.png", tmp_path / "a.tif", "a.png") == (18, 22)
    assert np.array_equal(read_tiff(tmp_path / "a.tif", channel_pages=True), rgb)
    assert stage_image(rgb[:16, :17], tmp_path / "b.tif", "array") == (16, 17)
    assert np.array_equal(read_image(tmp_path / "b.tif"), rgb[:16, :17, ::-1])  # BGR reader


def test_stage_image_refuses_small_and_unusable_images_naming_the_source(tmp_path: Path) -> None:
    with pytest.raises(CellDataError) as info:
        stage_image(np.zeros((15, 40), np.uint8), tmp_path / "s.tif", "src/small.png")
    assert str(info.value) == (
        "src/small.png: image is 15x40 px, below the minimum side of 16 px that training accepts"
    )
    alpha = np.full((20, 20, 4), 200, np.uint8)
    alpha[0, 0, 3] = 0  # a varying alpha channel carries information training would drop
    with pytest.raises(CellDataError, match=r"^src/alpha\.png: image: the alpha channel varies"):
        stage_image(alpha, tmp_path / "alpha.tif", "src/alpha.png")


# ---- the writer -----------------------------------------------------------------------------


def _writer(root: Path, names: tuple[str, ...] | None = ("a", "b"), **kwargs) -> DatasetWriter:
    options = ImportOptions(class_names=names)
    return DatasetWriter(root, ClassTable(options), ImportSummary("test"), **kwargs)


def _labels(height: int, width: int, *cells: tuple[int, slice, slice]) -> np.ndarray:
    out = np.zeros((height, width), np.uint32)
    for value, rows, cols in cells:
        out[rows, cols] = value
    return out


def test_writer_builds_the_layout_and_publishes_it_on_commit(tmp_path: Path) -> None:
    root = tmp_path / "out"
    image = _gradient(20, 24)
    with _writer(root) as writer:
        class_a = _labels(20, 24, (1, slice(0, 4), slice(0, 4)), (3, slice(8, 12), slice(8, 12)))
        class_b = _labels(20, 24, (2, slice(14, 18), slice(2, 6)))
        assert writer.add("train", "img 1", image, {0: class_a, 1: class_b}, "s1") == "img_1"
        assert writer.add("train", "img 1", image, {1: np.zeros((20, 24), int)}, "s2") == "img_1-2"
        assert writer.add("test", "z", image, {0: class_a}, "s3") == "z"
        assert writer.add("test", "y", _gradient(16, 16), {}, "s4") == "y"
        assert not root.exists()  # nothing published before commit
        summary = writer.commit(pixel_size_um=0.5, overwrite=False)
    assert summary.images == {"train": 2, "test": 2}
    assert summary.cells == {"a": 4, "b": 1} and summary.pixel_size_um == 0.5  # train + test
    assert summary.output == str(root.absolute())
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "dataset.json",
        "test_gt/z/class1.tif",
        "test_image_name_to_ids.json",
        "test_release/y.tif",
        "test_release/z.tif",
        "train/img_1-2/image.tif",  # its only label image was empty: no classK.tif
        "train/img_1/class1.tif",
        "train/img_1/class2.tif",
        "train/img_1/image.tif",
    ]
    mask = read_tiff(root / "train" / "img_1" / "class1.tif")
    assert mask.dtype == np.uint8 and np.array_equal(mask, class_a)  # smallest dtype, same ids
    id_map = json.loads((root / "test_image_name_to_ids.json").read_text())
    assert id_map == [
        {"file_name": "y.tif", "id": 1, "height": 16, "width": 16},
        {"file_name": "z.tif", "id": 2, "height": 20, "width": 24},
    ]
    info = read_dataset_info(root)
    assert (info.class_names, info.pixel_size_um, info.source_format) == (("a", "b"), 0.5, "test")
    assert no_leftovers(root)


def test_collected_class_names_are_sorted_and_mask_files_renumbered(tmp_path: Path) -> None:
    root = tmp_path / "out"
    with _writer(root, names=None) as writer:
        second = writer.classes.index("stroma", "here")  # index 0 now, class 2 at the end
        first = writer.classes.index("epithelium", "here")
        big = _labels(20, 20, (300, slice(0, 5), slice(0, 5)))  # an id above 255
        small = _labels(20, 20, (4, slice(10, 12), slice(10, 12)))
        writer.add("train", "x", _gradient(20, 20), {second: big, first: small}, "x")
        writer.commit(None, overwrite=False)
    assert read_dataset_info(root).class_names == ("epithelium", "stroma")
    class1 = read_tiff(root / "train" / "x" / "class1.tif")
    class2 = read_tiff(root / "train" / "x" / "class2.tif")
    assert np.array_equal(class1, small) and np.array_equal(class2, big)
    assert class2.dtype == np.uint16
    assert read_instance_mask(root / "train" / "x" / "class2.tif").max() == 300


def test_pixel_size_comes_from_the_images_when_they_agree(tmp_path: Path) -> None:
    sources = []
    for name, size in (("a", 0.5), ("b", 0.502), ("c", 0.6)):
        path = tmp_path / f"{name}.tif"
        per_cm = 1e4 / size
        tifffile.imwrite(
            path, _gradient(16, 16), resolution=(per_cm, per_cm), resolutionunit="CENTIMETER"
        )
        sources.append(path)
    with _writer(tmp_path / "agree") as writer:
        for source in sources[:2]:
            writer.add("train", source.stem, source, {}, source.name)
        assert writer.commit(None, overwrite=False).pixel_size_um == pytest.approx(0.5)
    with _writer(tmp_path / "given") as writer:
        writer.add("train", "a", sources[0], {}, "a")
        assert writer.commit(0.25, overwrite=False).pixel_size_um == 0.25  # given wins
    with _writer(tmp_path / "differ") as writer:
        for source in sources:
            writer.add("train", source.stem, source, {}, source.name)
        assert writer.commit(None, overwrite=False).pixel_size_um is None
    assert read_dataset_info(tmp_path / "differ").pixel_size_um is None


def test_error_inside_the_block_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "out"
    with pytest.raises(CellDataError, match=r"^s1: annotation is 10x20 px but the image is"):
        with _writer(root) as writer:
            writer.add("train", "a", _gradient(20, 20), {0: np.zeros((10, 20), int)}, "s1")
    assert not root.exists() and no_leftovers(root)
    assert list(tmp_path.iterdir()) == []


def test_commit_refuses_an_empty_import(tmp_path: Path) -> None:
    with pytest.raises(CellDataError, match="no image was imported"):
        with _writer(tmp_path / "out") as writer:
            writer.commit(None, overwrite=False)
    with pytest.raises(CellDataError, match="no class name known"):
        with _writer(tmp_path / "out", names=None) as writer:
            writer.add("train", "a", _gradient(16, 16), {}, "a")
            writer.commit(None, overwrite=False)
    assert list(tmp_path.iterdir()) == []


def test_output_root_rules(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "old.txt").write_text("keep")
    with pytest.raises(CellDataError, match="exists and is not empty; .* --overwrite"):
        _writer(root)
    assert (root / "old.txt").read_text() == "keep" and no_leftovers(root)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CellDataError, match="exists and is not a folder"):
        _writer(tmp_path / "file")
    source = root / "sources" / "a.png"
    with pytest.raises(CellDataError, match="holds the source"):
        _writer(root, overwrite=True, sources=[source])
    with _writer(root, overwrite=True) as writer:
        writer.add("train", "a", _gradient(16, 16), {}, "a")
        writer.commit(None, overwrite=True)
    assert not (root / "old.txt").exists() and (root / "train" / "a" / "image.tif").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]  # old copy removed


def test_root_filled_during_the_import_is_not_replaced(tmp_path: Path) -> None:
    root = tmp_path / "out"
    with pytest.raises(CellDataError, match="appeared during the import; not replaced"):
        with _writer(root) as writer:
            writer.add("train", "a", _gradient(16, 16), {}, "a")
            root.mkdir()
            (root / "theirs.txt").write_text("theirs")
            writer.commit(None, overwrite=False)
    assert [p.name for p in root.iterdir()] == ["theirs.txt"] and no_leftovers(root)
