"""Splits of the training images (hash, folds, all-val fallback) and the split COCO files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cellseg_d2.data.convert import load_train_coco
from cellseg_d2.data.splits import (
    assign_splits,
    check_split_args,
    split_json_name,
    split_of,
    write_coco_subset,
)
from cellseg_d2.data.synthetic import generate_synthetic_dataset
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import CACHE_DIR, DEFAULT_CLASS_NAMES


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three small synthetic training images."""
    root = tmp_path / "cells"
    generate_synthetic_dataset(root, num_train=3, num_test=0, seed=1, min_size=32, max_size=40)
    return root


def test_split_is_deterministic_and_stable_when_images_are_added() -> None:
    names = [f"img{i:03d}" for i in range(300)]
    first = {n: split_of(n, 0.2, seed=1) for n in names}
    assert first == {n: split_of(n, 0.2, seed=1) for n in names}
    assert 30 < sum(s == "val" for s in first.values()) < 90
    more = names + [f"new{i}" for i in range(50)]
    assert all(split_of(n, 0.2, seed=1) == first[n] for n in more if n in first)
    assert first != {n: split_of(n, 0.2, seed=2) for n in names}  # the seed matters
    assert all(split_of(n, 0.0) == "train" for n in names)


def test_folds_partition_the_images() -> None:
    names = [f"img{i:03d}" for i in range(200)]
    folds = [
        {n for n in names if split_of(n, seed=4, fold=k, num_folds=5) == "val"} for k in range(5)
    ]
    assert set().union(*folds) == set(names)
    assert sum(len(f) for f in folds) == len(names)
    assert all(len(f) > 10 for f in folds)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fold": 3, "num_folds": 3},
        {"fold": -1, "num_folds": 3},
        {"fold": None, "num_folds": 3},
        {"fold": 0, "num_folds": 1},
        {"fold": 1, "num_folds": None},
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
    ],
)
def test_invalid_split_arguments_raise(kwargs: dict) -> None:
    arguments = {"val_fraction": 0.1, "fold": None, "num_folds": None, **kwargs}
    with pytest.raises(ValueError):
        check_split_args(**arguments)
    with pytest.raises(ValueError):
        split_of("img", **arguments)


def test_assign_splits_follows_split_of_and_trains_on_all_when_all_fall_into_val(
    caplog: pytest.LogCaptureFixture,
) -> None:
    names = [f"img{i:03d}" for i in range(50)]
    assert assign_splits(names, 0.3, seed=2) == [split_of(n, 0.3, seed=2) for n in names]
    folds = assign_splits(names, seed=2, fold=1, num_folds=4)
    assert folds == [split_of(n, seed=2, fold=1, num_folds=4) for n in names]
    with caplog.at_level(logging.WARNING, logger="cellseg_d2.data.splits"):
        assert assign_splits(names[:2], 0.999, source="/data/x") == ["train", "train"]
    assert "every image of /data/x fell into the validation split" in caplog.text
    assert assign_splits([], 0.5) == []


def test_split_json_name_encodes_every_setting() -> None:
    base = {"val_fraction": 0.1, "seed": 0, "fold": None, "num_folds": None, "min_area": 4}
    name = split_json_name("val", **base, class_names=DEFAULT_CLASS_NAMES)
    assert name.startswith("instances_val_") and name.endswith(".json")
    assert name == split_json_name("val", **base, class_names=list(DEFAULT_CLASS_NAMES))
    others = {
        split_json_name("train", **base, class_names=DEFAULT_CLASS_NAMES),
        split_json_name("val", **{**base, "seed": 1}, class_names=DEFAULT_CLASS_NAMES),
        split_json_name("val", **{**base, "min_area": 5}, class_names=DEFAULT_CLASS_NAMES),
        split_json_name("val", **{**base, "fold": 0, "num_folds": 2}, class_names=["a"]),
        split_json_name("val", **base, class_names=["a", "b", "c", "d"]),
    }
    assert len(others) == 5 and name not in others


def test_write_coco_subset(dataset: Path) -> None:
    coco = load_train_coco(dataset)
    path = write_coco_subset(coco, [2], dataset / CACHE_DIR / "sub.json")
    subset = json.loads(path.read_text())
    assert [i["id"] for i in subset["images"]] == [2]
    assert {a["image_id"] for a in subset["annotations"]} == {2}
    assert subset["categories"] == coco["categories"]
    stamp = path.stat().st_mtime_ns
    write_coco_subset(coco, [2], path)
    assert path.stat().st_mtime_ns == stamp  # same subset of the same source: not rewritten
    write_coco_subset(coco, [1, 2], path)
    assert len(json.loads(path.read_text())["images"]) == 2


def test_write_coco_subset_never_replaces_a_file_it_did_not_write(dataset: Path) -> None:
    coco = load_train_coco(dataset)
    path = dataset / CACHE_DIR / "mine.json"
    path.write_text('{"images": []}')
    with pytest.raises(CellDataError, match="not written by cellseg-d2"):
        write_coco_subset(coco, [1], path)
    assert path.read_text() == '{"images": []}'
