"""PanNuke fold import: images.npy / masks.npy, ids repeated across channels, test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.data.importers import ImportOptions, import_dataset
from cellseg_d2.data.importers.pannuke import PANNUKE_CLASS_NAMES
from cellseg_d2.data.io import read_image
from cellseg_d2.errors import CellDataError
from tests.importer_helpers import dataset_info, no_leftovers, prepare, read_cells

N, H, W = 3, 32, 40


def _fold(root: Path, number: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """A fold in PanNuke's download layout, float64 arrays like the release."""
    rng = np.random.default_rng(number)
    images = rng.uniform(0, 255, (N, H, W, 3))
    masks = np.zeros((N, H, W, 6))
    for index in range(N):
        for n in range(6):
            channel = (n + index) % 5
            top, left = 2 + (n // 3) * 15, 2 + (n % 3) * 12
            # Ids 1..3 repeat across channels, as PanNuke's do.
            masks[index, top : top + 9, left : left + 9, channel] = 1 + n % 3
        masks[index, :, :, 5] = (masks[index, :, :, :5].sum(axis=2) == 0).astype(float)
    fold = root / f"Fold {number}"
    (fold / "images" / f"fold{number}").mkdir(parents=True)
    (fold / "masks" / f"fold{number}").mkdir(parents=True)
    np.save(fold / "images" / f"fold{number}" / "images.npy", images)
    np.save(fold / "masks" / f"fold{number}" / "masks.npy", masks)
    np.save(fold / "images" / f"fold{number}" / "types.npy", np.array(["Breast"] * N))
    return fold, images, masks


def test_pannuke_round_trip_with_test_fold(tmp_path: Path) -> None:
    train, images, masks = _fold(tmp_path, 1)
    test, _, test_masks = _fold(tmp_path, 2)
    root = tmp_path / "out"
    summary = import_dataset("pannuke", train, root, test=test)
    assert dataset_info(root)["class_names"] == list(PANNUKE_CLASS_NAMES)
    assert summary.images == {"train": N, "test": N}
    assert sum(summary.cells.values()) == 2 * N * 6
    for index in range(N):
        folder = root / "train" / f"fold1_{index:05d}"
        image = read_image(folder / "image.tif")[:, :, ::-1]
        assert np.array_equal(image, np.rint(images[index]).astype(np.uint8))
        found = read_cells(folder)
        expected = [
            (c, masks[index, :, :, c] == cell)
            for c in range(5)
            for cell in np.unique(masks[index, :, :, c])
            if cell
        ]
        assert len(found) == len(expected) == 6
        for category, mask in expected:
            assert any(c == category and np.array_equal(m, mask) for c, m in found)
    assert len(read_cells(root / "test_gt" / "fold2_00001")) == 6
    entries = load_id_map(root / "test_image_name_to_ids.json")
    assert [e["file_name"] for e in entries] == [f"fold2_{i:05d}.tif" for i in range(N)]
    expected_counts = {
        name: sum(len(np.unique(masks[i, :, :, c])) - 1 for i in range(N))
        for c, name in enumerate(PANNUKE_CLASS_NAMES)
    }
    assert summary.cells == {
        name: count + sum(len(np.unique(test_masks[i, :, :, c])) - 1 for i in range(N))
        for c, (name, count) in enumerate(expected_counts.items())
    }
    assert prepare(root) == expected_counts


def test_pannuke_errors(tmp_path: Path) -> None:
    fold, _, masks = _fold(tmp_path, 1)
    with pytest.raises(CellDataError, match="PanNuke has 5 classes"):
        import_dataset("pannuke", fold, tmp_path / "out", ImportOptions(class_names=("a", "b")))
    path = fold / "masks" / "fold1" / "masks.npy"
    np.save(path, masks[:, :, :, :5])
    with pytest.raises(CellDataError, match=r"masks.npy: expected N x H x W x 6"):
        import_dataset("pannuke", fold, tmp_path / "out")
    broken = masks.copy()
    broken[1, 0, 0, 2] = 0.5
    np.save(path, broken)
    with pytest.raises(CellDataError, match=r"masks.npy: image 1, channel 2: instance ids must"):
        import_dataset("pannuke", fold, tmp_path / "out")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path / "out")
    np.save(path, np.array([{"a": 1}], dtype=object))
    with pytest.raises(CellDataError, match="pickled arrays are refused"):
        import_dataset("pannuke", fold, tmp_path / "out")
