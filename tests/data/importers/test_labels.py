"""Label-image import: Cellpose/StarDist naming, class images and tables, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellseg_d2.data.importers import ImportOptions, import_dataset
from cellseg_d2.data.io import read_instance_mask, write_tiff
from cellseg_d2.errors import CellDataError
from tests.importer_helpers import dataset_info, no_leftovers, prepare, read_cells

H, W = 48, 64


def _labels(seed: int) -> np.ndarray:
    """A label image of 6 rectangles-ish cells with sparse ids (3, 10, 11, 40, 41, 500)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((H, W), np.uint16)
    for n, cell in enumerate((3, 10, 11, 40, 41, 500)):
        top, left = 4 + (n // 3) * 22, 4 + (n % 3) * 20
        labels[top : top + 14 + rng.integers(0, 4), left : left + 12 + rng.integers(0, 4)] = cell
    labels[10, 10] = 0  # a hole inside cell 3: the exact pixels must survive
    return labels


def _image(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (H, W), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _cells_by_id(labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(i): labels == i for i in np.unique(labels) if i}


def test_labels_single_class_cellpose_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sources = {}
    for k, name in enumerate(["a", "b"]):
        _image(src / f"{name}.png", k)
        sources[name] = _labels(k)
    Image.fromarray(sources["a"]).save(src / "a_cp_masks.png")  # Cellpose's name
    write_tiff(src / "b_masks.tif", sources["b"].astype(np.float64))
    root = tmp_path / "out"
    summary = import_dataset("labels", src, root, ImportOptions(class_names=("nucleus",)))
    assert summary.cells == {"nucleus": 12}
    for name, labels in sources.items():
        written = read_instance_mask(root / "train" / name / "class1.tif")
        assert np.array_equal(written, labels)  # ids kept, pixels exact
    assert dataset_info(root)["class_names"] == ["nucleus"]
    assert prepare(root) == {"nucleus": 12}


def test_labels_separate_folder_with_class_image_and_tables(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    classes_of = {3: 1, 10: 2, 11: 2, 40: 1, 41: 3, 500: 3}
    expected = {}
    for k, name in enumerate(["img0", "img1", "img2"]):
        _image(images / f"{name}.tif", k)
        labels = _labels(k)
        write_tiff(masks / f"{name}.tif", labels)  # StarDist: same name, other folder
        expected[name] = labels
    # img0: class image, painted loosely (only part of each cell; zeros are ignored).
    class_image = np.zeros((H, W), np.uint8)
    for cell, kind in classes_of.items():
        rows, cols = np.nonzero(expected["img0"] == cell)
        class_image[rows[::2], cols[::2]] = kind
    write_tiff(masks / "img0_classes.tif", class_image)
    # img1: CSV with names and numbers; img2: JSON dict.
    names = ["tumour", "immune", "stroma"]
    rows = ["label,class"] + [f"{c},{names[k - 1] if c % 2 else k}" for c, k in classes_of.items()]
    (masks / "img1.csv").write_text("\n".join(rows) + "\n")
    (masks / "img2.json").write_text(json.dumps({str(c): k for c, k in classes_of.items()}))
    root = tmp_path / "out"
    options = ImportOptions(class_names=tuple(names))
    summary = import_dataset("labels", images, root, options, labels=masks)
    assert summary.cells == {"tumour": 6, "immune": 6, "stroma": 6}
    for name, labels in expected.items():
        found = read_cells(root / "train" / name)
        cells = _cells_by_id(labels)
        assert len(found) == len(cells)
        for category, mask in found:
            cell = int(np.unique(labels[mask])[0])
            assert np.array_equal(mask, cells[cell])  # exact pixels
            assert category == classes_of[cell] - 1
    assert prepare(root) == {"tumour": 6, "immune": 6, "stroma": 6}


def test_labels_refuses_id_in_two_classes_and_missing_masks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _image(src / "a.png", 0)
    labels = _labels(0)
    write_tiff(src / "a_masks.tif", labels)
    classes = np.where(labels > 0, 1, 0).astype(np.uint8)
    classes[labels == 10] = 2
    classes[np.argwhere(labels == 10)[0][0], np.argwhere(labels == 10)[0][1]] = 1
    write_tiff(src / "a_classes.tif", classes)
    options = ImportOptions(class_names=("x", "y"))
    with pytest.raises(CellDataError, match=r"a_masks.tif: cell id 10: the id appears in two"):
        import_dataset("labels", src, tmp_path / "out", options)
    (src / "a_classes.tif").unlink()
    (src / "a.csv").write_text("id,class\n10,x\n10,y\n")
    with pytest.raises(CellDataError, match=r"a.csv: id '10': the id appears in two classes"):
        import_dataset("labels", src, tmp_path / "out", options)
    # Cells the table leaves out have no class: refused, named class, or skipped.
    (src / "a.csv").write_text("id,class\n10,x\n3,y\n")
    with pytest.raises(CellDataError, match="cell id 11: object without a class"):
        import_dataset("labels", src, tmp_path / "out", options)
    options = ImportOptions(class_names=("x", "y"), unclassified="rest")
    summary = import_dataset("labels", src, tmp_path / "out", options)
    assert summary.cells == {"x": 1, "y": 1, "rest": 4}
    (src / "a.csv").unlink()
    _image(src / "b.png", 1)
    with pytest.raises(CellDataError, match=r"b.png: no label image"):
        import_dataset("labels", src, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and no_leftovers(tmp_path / "out2")


def test_labels_size_mismatch(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _image(src / "a.png", 0)
    write_tiff(src / "a_masks.tif", _labels(0)[:, :-2])
    with pytest.raises(CellDataError, match=r"a_masks.tif: annotation is 48x62 px but the image"):
        import_dataset("labels", src, tmp_path / "out")
    assert no_leftovers(tmp_path / "out")
