"""The work folder's shards: checked when read, a bad one named and predicted again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.predict import predict_to_files
from cellseg_d2.inference.predictor import detections_to_results
from cellseg_d2.inference.shards import (
    FINGERPRINT_FILE,
    PredictionShards,
    check_coco_shard,
    check_csv_shard,
    work_dir_for,
)

CLASSES = ["a", "b", "c", "d"]
ENTRY = {"file_name": "img.tif", "id": 7, "height": 20, "width": 30}


def _good_results(entry: dict = ENTRY) -> list[dict]:
    square = Detection(1, 0.8, 2, 3, np.ones((5, 6), bool))
    return detections_to_results([square], entry["id"], entry["height"], entry["width"])


def test_check_coco_shard_accepts_a_good_shard() -> None:
    assert check_coco_shard(json.dumps(_good_results()).encode(), ENTRY, 4, "7.json") == 1
    assert check_coco_shard(b"[]", ENTRY, 4, "7.json") == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: b'[{"image_id": 7,', "unreadable JSON"),
        (lambda r: b"{}", "not a JSON list"),
        (lambda r: json.dumps([1]).encode(), "not an object"),
        (lambda r: json.dumps([{**r[0], "image_id": 8}]).encode(), "image_id 8 is not this"),
        (lambda r: json.dumps([{**r[0], "image_id": True}]).encode(), "image_id True"),
        (lambda r: json.dumps([{**r[0], "category_id": 5}]).encode(), "category_id 5 is not"),
        (lambda r: json.dumps([{**r[0], "score": 2}]).encode(), "score 2 is not"),
        (lambda r: json.dumps([{**r[0], "bbox": [1, 2]}]).encode(), "bbox is not"),
        (lambda r: json.dumps([{**r[0], "extra": 1}]).encode(), "not an object with exactly"),
        (
            lambda r: json.dumps(
                [{**r[0], "segmentation": {"size": [30, 20], "counts": "a"}}]
            ).encode(),
            r"segmentation is not a COCO RLE of size \[20, 30\]",
        ),
    ],
)
def test_check_coco_shard_names_each_problem(change, message: str) -> None:
    with pytest.raises(CellDataError, match=rf"^7\.json: .*{message}"):
        check_coco_shard(change(_good_results()), ENTRY, 4, "7.json")


def test_check_csv_shard() -> None:
    row = "img.tif,7,{id},{cls},a,0.9,30,1.5,1.5,0,0,3,3,8,0.5,1,1,2,3,label image\n"
    good = row.format(id=1, cls=1) + row.format(id=2, cls=4)
    assert check_csv_shard(good, ENTRY, 4, "7.csv") == 2
    assert check_csv_shard("", ENTRY, 4, "7.csv") == 0
    bad = {
        "columns": ("img.tif,7,1\n", "3 columns"),
        "image": (
            row.replace("img.tif", "other.tif").format(id=1, cls=1),
            "image 'other.tif' / '7' is not this",
        ),
        "id": (row.format(id=2, cls=1), "cell id '2' where 1 comes next"),
        "class": (row.format(id=1, cls=5), "class_id '5' is not a class"),
        "digits": (row.format(id=1, cls="²"), "class_id '²'"),
        "cells": (row.replace("label image", "some").format(id=1, cls=1), "cells 'some' is"),
    }
    for text, message in bad.values():
        with pytest.raises(CellDataError, match=rf"^7\.csv: row 1: {message}"):
            check_csv_shard(text, ENTRY, 4, "7.csv")
    # a formula-like image name is compared in its quoted (spreadsheet-safe) form
    entry = {**ENTRY, "file_name": "=img.tif"}
    assert check_csv_shard(good.replace("img.tif", "'=img.tif"), entry, 4, "7.csv") == 2
    with pytest.raises(CellDataError, match="not this shard's"):
        check_csv_shard(good.replace("img.tif", "=img.tif"), entry, 4, "7.csv")


def test_fingerprint_records_the_export_mode() -> None:
    from cellseg_d2.inference.predict import build_predict_config
    from cellseg_d2.inference.shards import prediction_fingerprint
    from tests.conftest import INSTANT_CONFIG

    cfg = build_predict_config(str(INSTANT_CONFIG), ["MODEL.DEVICE", "cpu"])
    entries = [ENTRY]
    default = prediction_fingerprint(cfg, False, ["geojson"], entries)
    keep = prediction_fingerprint(cfg, False, ["geojson"], entries, keep_overlaps=True)
    assert default["keep_overlaps"] == "False" and keep["keep_overlaps"] == "True"
    assert {k for k in default if default[k] != keep[k]} == {"keep_overlaps"}


def test_fingerprint_that_is_not_a_record_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "sub.json.partial"
    work.mkdir()
    (work / FINGERPRINT_FILE).write_text("[1, 2]")
    with pytest.raises(CellDataError, match="not a fingerprint"):
        PredictionShards(work, {"a": "1"}, resume=True)


class _SquarePredictor:
    """One square per image; raises KeyboardInterrupt (a Ctrl-C) on call ``interrupt_at``."""

    batch_size = 1

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls, self.interrupt_at = 0, interrupt_at

    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return [[Detection(2, 0.9, 2, 3, np.ones((5, 6), bool))] for _ in images]

    def warn_detection_cap(self, num_images: int) -> None:
        """One detection per image never reaches a cap."""


def _run(synthetic_root: Path, out: Path, predictor: _SquarePredictor, resume: bool = False):
    entries = load_id_map(synthetic_root / "test_image_name_to_ids.json")
    return predict_to_files(
        predictor,
        synthetic_root / "test_release",
        entries,
        formats=["coco", "csv"],
        fingerprint={"run": "square"},
        class_names=CLASSES,
        output=out / "sub.json",
        output_dir=out / "export",
        resume=resume,
        progress=False,
    )


def _spoil(kind: str, work: Path, entries: list[dict]) -> Path:
    """Make the first image's shard bad in the way ``kind`` says; return the bad file."""
    first, other = entries[0]["id"], entries[1]["id"]
    shard = work / f"{first}.json"
    results = json.loads(shard.read_text())
    if kind == "malformed":
        shard.write_text(shard.read_text()[:-7])
    elif kind == "object":
        shard.write_text("{}")
    elif kind == "foreign_image":
        shard.write_text(json.dumps([{**results[0], "image_id": other}]))
    elif kind == "unknown_image":
        shard.write_text(json.dumps([{**results[0], "image_id": 99999}]))
    elif kind == "foreign_category":
        shard.write_text(json.dumps([{**results[0], "category_id": 9}]))
    else:  # a table shard of another image
        shard = work / f"{first}.csv"
        shard.write_text(shard.read_text().replace(entries[0]["file_name"], "x.tif"))
    return shard


@pytest.mark.parametrize(
    "kind",
    ["malformed", "object", "foreign_image", "unknown_image", "foreign_category", "csv"],
)
def test_bad_shard_is_named_and_predicted_again_on_resume(
    synthetic_root: Path, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    entries = load_id_map(synthetic_root / "test_image_name_to_ids.json")
    reference = tmp_path / "reference"
    _run(synthetic_root, reference, _SquarePredictor())
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(synthetic_root, out, _SquarePredictor(interrupt_at=3))  # 2 of 3 images done
    work = work_dir_for(out / "sub.json")
    bad = _spoil(kind, work, entries)
    # a shard file of an image that is not in the run is never assembled
    (work / "99999.json").write_text(json.dumps(_good_results({**ENTRY, "id": 99999})))
    predictor = _SquarePredictor()
    with caplog.at_level(logging.WARNING, logger="cellseg_d2.inference.shards"):
        summary = _run(synthetic_root, out, predictor, resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(bad) in warnings[0]
    assert entries[0]["file_name"] in warnings[0]
    assert (summary.resumed, summary.predicted, predictor.calls) == (1, 2, 2)
    for name in ("sub.json", "export/cells.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert not work.exists()
