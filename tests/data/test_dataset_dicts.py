"""cellseg_d2.data.dataset_dicts: COCO cache -> detectron2 dataset dicts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from detectron2.structures import BoxMode

from cellseg_d2.data.dataset_dicts import load_cell_test_dicts, load_cell_train_dicts
from cellseg_d2.data.rle import decode_rle
from tests.data.tiny_dataset import labels_a, make_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "cells")


def test_round_trip_reproduces_the_masks(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cellseg_d2.data.convert"):
        dicts = load_cell_train_dicts(dataset, min_area=4)
    assert "dropped 1 instance(s)" in caplog.text
    assert [d["folder"] for d in dicts] == ["a", "b"]
    first = dicts[0]
    assert first["file_name"] == str((dataset / "train" / "a" / "image.tif").resolve())
    assert (first["height"], first["width"], first["image_id"]) == (20, 24, 1)
    expected = {
        (cls - 1, int(i))
        for cls, labels in labels_a().items()
        for i in np.unique(labels)
        if i and (labels == i).sum() >= 4
    }
    assert {(a["category_id"], a["area"]) for a in first["annotations"]} == {
        (cat, int((labels_a()[cat + 1] == i).sum())) for cat, i in expected
    }
    for annotation in first["annotations"]:
        assert annotation["bbox_mode"] == BoxMode.XYWH_ABS and annotation["iscrowd"] == 0
        assert isinstance(annotation["segmentation"]["counts"], str)
        mask = decode_rle(annotation["segmentation"])
        labels = labels_a()[annotation["category_id"] + 1]
        (value,) = np.unique(labels[mask])
        assert (mask == (labels == value)).all()  # exact, and one id = one instance
        ys, xs = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    two_piece = [a for a in first["annotations"] if a["area"] == 9 + 12]
    assert len(two_piece) == 1  # instance 9: two blobs, one annotation
    (column,) = dicts[1]["annotations"]
    assert column["category_id"] == 1 and column["bbox"] == [0, 0, 2, 18]


def test_test_dicts_carry_the_id_map_ids(dataset: Path) -> None:
    dicts = load_cell_test_dicts(dataset)
    assert [(d["image_id"], Path(d["file_name"]).name, d["height"]) for d in dicts] == [
        (3, "y.tif", 21),
        (7, "x.tif", 17),
    ]
    assert all("annotations" not in d and Path(d["file_name"]).is_file() for d in dicts)
