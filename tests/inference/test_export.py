"""Exports beyond the submission: label images, QuPath GeoJSON and the per-cell table agree."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shapely.geometry import MultiPolygon, Polygon, shape

from cellseg_d2.data import decode_rle, label_image_to_instances
from cellseg_d2.data.importers import ImportOptions, import_dataset
from cellseg_d2.data.io import read_tiff
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.export import (
    CELLS_ALL_DETECTIONS,
    CELLS_LABEL_IMAGE,
    CSV_COLUMNS,
    cell_table_rows,
    detections_to_label_images,
    export_paths,
    spreadsheet_safe,
    write_image_exports,
    write_label_images,
)
from cellseg_d2.inference.predictor import detections_to_results
from cellseg_d2.utils.layout import class_color
from tests.importer_helpers import read_cells

CLASS_NAMES = ["epithelial", "lymphocyte", "neutrophil", "macrophage"]
H, W = 128, 160


def _synthetic_detections(seed: int = 0, size: tuple[int, int] = (H, W)) -> list[Detection]:
    """Every ground-truth cell of a synthetic image as a detection with a random score."""
    rng = np.random.default_rng(seed)
    _, labels = synthesize_image(rng, *size)
    detections = []
    for cls, label in labels.items():
        for inst in label_image_to_instances(label.astype(np.int64)):
            x, y, w, h = inst.bbox
            crop = decode_rle(inst.rle)[y : y + h, x : x + w]
            detections.append(Detection(cls - 1, float(rng.uniform(0.05, 1.0)), y, x, crop))
    return detections


def _overlapping_detections() -> list[Detection]:
    """Deterministic detections that overlap: synthetic cells, shifted copies of some of them
    (partly hidden, or cut in two by better cells), a copy hidden entirely, and a ring."""
    detections = _synthetic_detections(seed=3)
    for det in detections[:12:3]:  # shifted copies of lower score overlap their originals
        detections.append(
            Detection(det.category, det.score / 2, det.top + 2, det.left + 3, det.mask)
        )
    first = detections[0]
    detections.append(Detection(first.category, 0.01, first.top, first.left, first.mask))
    ring = np.ones((15, 15), bool)
    ring[5:10, 5:10] = False
    detections.append(Detection(2, 0.99, 100, 130, ring))
    bar = np.ones((3, 30), bool)  # under the ring's middle column: two pieces left
    detections.append(Detection(1, 0.2, 106, 123, bar))
    return detections


def _full_masks(detections: list[Detection], height: int, width: int) -> list[np.ndarray]:
    """The detections' masks at image size, through the submission's RLEs."""
    results = detections_to_results(detections, 1, height, width)
    return [decode_rle(r["segmentation"]) for r in results]


def _table(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(",".join(CSV_COLUMNS) + "\n" + text)))


def _export(tmp_path: Path, detections: list[Detection], keep_overlaps: bool = False) -> tuple:
    """Run the per-image export into ``tmp_path``: (label images, table rows, GeoJSON)."""
    entry = {"file_name": "img.tif", "id": 7, "height": H, "width": W}
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    formats = ["labels", "geojson", "csv"]
    text = write_image_exports(
        entry, image, detections, formats, tmp_path, CLASS_NAMES, keep_overlaps
    )
    paths = export_paths(tmp_path, "img.tif")
    labels = (read_tiff(paths["instances"]), read_tiff(paths["classes"]))
    return labels, _table(text), json.loads(paths["geojson"].read_text())


def test_label_images_round_trip_higher_score_wins(tmp_path: Path) -> None:
    detections = _synthetic_detections()
    # two overlapping squares on top: the higher score must own the shared pixels
    square = np.ones((12, 12), bool)
    low, high = Detection(0, 0.30, 2, 2, square), Detection(3, 0.95, 8, 8, square)
    detections += [low, high]
    labels = detections_to_label_images(detections, H, W)
    paths = export_paths(tmp_path, "img.tif")
    write_label_images(labels, paths["instances"], paths["classes"])
    instances, classes = read_tiff(paths["instances"]), read_tiff(paths["classes"])
    assert instances.dtype == np.uint16
    assert np.array_equal(instances, labels.instances)

    # the same instances as the RLE results, painted by descending score into free pixels
    masks = _full_masks(detections, H, W)
    expected = np.zeros((H, W), np.int64)
    expected_classes = np.zeros((H, W), np.int64)
    next_id = 0
    for index in sorted(range(len(detections)), key=lambda i: -detections[i].score):
        free = masks[index] & (expected == 0)
        if free.any():
            next_id += 1
            expected[free] = next_id
            expected_classes[free] = detections[index].category + 1
    assert np.array_equal(instances, expected)
    assert np.array_equal(classes, expected_classes)
    assert sorted(np.unique(instances))[1:] == list(range(1, len(labels.cells) + 1))
    overlap = np.zeros((H, W), bool)
    overlap[8:14, 8:14] = True
    high_id = next(k for k, c in enumerate(labels.cells, 1) if c.score == 0.95)
    assert (instances[overlap] == high_id).all() and (classes[overlap] == 4).all()
    # each cell holds exactly its label-image pixels
    for cell_id, cell in enumerate(labels.cells, start=1):
        painted = np.zeros((H, W), bool)
        painted[cell.top : cell.box[3], cell.left : cell.box[2]] = cell.mask
        assert np.array_equal(painted, instances == cell_id)


def test_label_images_switch_to_uint32_above_65535_cells() -> None:
    pixel = np.ones((1, 1), bool)
    detections = [Detection(0, 0.5, i // 300, i % 300, pixel) for i in range(65536)]
    labels = detections_to_label_images(detections, 300, 300)
    assert labels.instances.dtype == np.uint32
    assert int(labels.instances.max()) == 65536
    assert len(labels.cells) == 65536


def _geometry(feature: dict) -> Polygon | MultiPolygon:
    return shape(feature["geometry"])


def test_label_image_csv_and_geojson_hold_the_same_cells(tmp_path: Path) -> None:
    detections = _overlapping_detections()
    (instances, classes), rows, collection = _export(tmp_path, detections)
    ids = set(np.unique(instances)) - {0}
    n = len(ids)
    assert ids == set(range(1, n + 1)) and n < len(detections)  # some were hidden
    features = collection["features"]
    assert collection["properties"] == {"cells": CELLS_LABEL_IMAGE}
    assert [f["id"] for f in features] == list(range(1, n + 1))
    assert [f["properties"]["measurements"]["cell_id"] for f in features] == list(range(1, n + 1))
    assert [int(row["cell_id"]) for row in rows] == list(range(1, n + 1))
    assert {row["cells"] for row in rows} == {CELLS_LABEL_IMAGE}
    by_id = {f["id"]: f for f in features}
    multi = 0
    for row in rows:
        cell_id = int(row["cell_id"])
        pixels = instances == cell_id
        feature = by_id[cell_id]
        geometry = _geometry(feature)
        multi += geometry.geom_type == "MultiPolygon"
        assert geometry.is_valid
        # one pixel count: the table, the measurement and the polygon's area
        count = int(pixels.sum())
        assert int(row["area_px"]) == feature["properties"]["measurements"]["area_px"] == count
        assert geometry.area == count
        # one convention: the table's centroid is the polygon's (QuPath: centres at +0.5)
        assert abs(float(row["centroid_x"]) - geometry.centroid.x) < 1e-3
        assert abs(float(row["centroid_y"]) - geometry.centroid.y) < 1e-3
        ys, xs = np.nonzero(pixels)
        assert abs(float(row["centroid_x"]) - (xs.mean() + 0.5)) < 1e-3
        assert (int(row["bbox_x0"]), int(row["bbox_x1"])) == (xs.min(), xs.max() + 1)
        assert geometry.bounds == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        category = int(classes[pixels][0])
        assert int(row["class_id"]) == category and row["class_name"] == CLASS_NAMES[category - 1]
        assert feature["properties"]["classification"] == {
            "name": CLASS_NAMES[category - 1],
            "color": list(class_color(category - 1)),
        }
        score = feature["properties"]["measurements"]["score"]
        assert float(row["score"]) == pytest.approx(score, abs=1e-6)  # 6 digits in the table
        assert feature["properties"]["objectType"] == "detection"
    assert multi >= 1  # the bar cut in two by the ring


def test_keep_overlaps_writes_every_detection_and_says_so(tmp_path: Path) -> None:
    detections = _overlapping_detections()
    (instances, _), rows, collection = _export(tmp_path, detections, keep_overlaps=True)
    ranked = sorted(detections, key=lambda det: -det.score)
    features = collection["features"]
    assert collection["properties"] == {"cells": CELLS_ALL_DETECTIONS}
    assert len(features) == len(rows) == len(detections)
    assert {row["cells"] for row in rows} == {CELLS_ALL_DETECTIONS}
    masks = _full_masks(ranked, H, W)
    for cell_id, (det, mask, row, feature) in enumerate(zip(ranked, masks, rows, features), 1):
        assert feature["id"] == int(row["cell_id"]) == cell_id
        assert int(row["class_id"]) == det.category + 1
        assert feature["properties"]["measurements"]["score"] == det.score
        assert int(row["area_px"]) == mask.sum() == _geometry(feature).area
        ys, xs = np.nonzero(mask)
        assert abs(float(row["centroid_y"]) - (ys.mean() + 0.5)) < 1e-3
        assert abs(_geometry(feature).centroid.y - (ys.mean() + 0.5)) < 1e-3
    # the label image keeps the same ids: a detection's rank, missing where it was hidden
    present = set(np.unique(instances)) - {0}
    hidden = next(k for k, det in enumerate(ranked, 1) if det.score == 0.01)
    assert hidden not in present and present < set(range(1, len(detections) + 1))
    default = detections_to_label_images(detections, H, W)
    assert np.array_equal(instances > 0, default.instances > 0)


def test_geojson_of_label_cells_imports_back_to_the_label_image(tmp_path: Path) -> None:
    """The round trip: predict-style export -> ``qupath`` importer -> the same cells."""
    detections = _overlapping_detections()
    (instances, classes), _, _ = _export(tmp_path / "export", detections)
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "img.tif", np.zeros((H, W, 3), np.uint8), photometric="rgb")
    root = tmp_path / "imported"
    options = ImportOptions(class_names=tuple(CLASS_NAMES))
    geojson = export_paths(tmp_path / "export", "img.tif")["geojson"]
    import_dataset("qupath", geojson, root, options, images=images)
    found = read_cells(root / "train" / "img")
    expected = [
        (int(classes[instances == k][0]) - 1, instances == k)
        for k in range(1, int(instances.max()) + 1)
    ]

    def key(cell: tuple[int, np.ndarray]) -> tuple[int, bytes]:
        return cell[0], np.packbits(cell[1]).tobytes()

    assert sorted(map(key, found)) == sorted(map(key, expected))


def test_cell_table_rows_measure_each_cell() -> None:
    detections = _synthetic_detections(seed=2)
    detections.append(Detection(0, 0.01, detections[0].top, detections[0].left, detections[0].mask))
    labels = detections_to_label_images(detections, H, W)
    assert len(labels.cells) == len(detections) - 1  # the low-score copy is hidden entirely
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :, 2] = 200  # BGR: red channel
    rows = _table(cell_table_rows(labels, image, "img.tif", 7, CLASS_NAMES))
    assert [int(row["cell_id"]) for row in rows] == list(range(1, len(labels.cells) + 1))
    for row in rows:
        cell = labels.instances == int(row["cell_id"])
        det = labels.cells[int(row["cell_id"]) - 1]
        assert int(row["area_px"]) == int(cell.sum())
        assert row["class_name"] == CLASS_NAMES[det.category]
        assert int(row["class_id"]) == det.category + 1
        assert row["image"] == "img.tif" and row["image_id"] == "7"
        assert float(row["mean_intensity_r"]) == 200.0 and float(row["mean_intensity_b"]) == 0.0
        ys, xs = np.nonzero(cell)
        assert int(row["bbox_y0"]) == ys.min() and int(row["bbox_y1"]) == ys.max() + 1
        assert abs(float(row["centroid_x"]) - (xs.mean() + 0.5)) < 1e-3
    assert cell_table_rows(detections_to_label_images([], 8, 8), image, "x.tif", 1, []) == ""


def test_spreadsheet_safe_quotes_formula_starts_only() -> None:
    for text in ("=1+1", "+x", "-y", "@SUM(A1)", "\tz", "\rw", "\0v"):
        assert spreadsheet_safe(text) == "'" + text
    for text in ("cell.tif", "", "a=b", "'=already", " =x"):
        assert spreadsheet_safe(text) == text


def test_cell_table_quotes_names_that_spreadsheets_would_run() -> None:
    square = np.ones((6, 6), bool)
    detections = [Detection(k, 0.9 - 0.1 * k, 10 * k, 10 * k, square) for k in range(4)]
    labels = detections_to_label_images(detections, 48, 48)
    image = np.full((48, 48, 3), 9, np.uint8)
    names = ['=HYPERLINK("http://x")', "+cmd", "-2+3", "@SUM(1)"]
    image_name = "=cmd|' /C calc'!A0.tif"
    rows = _table(cell_table_rows(labels, image, image_name, 3, names))
    assert [row["class_name"] for row in rows] == ["'" + name for name in names]
    assert {row["image"] for row in rows} == {"'" + image_name}
    # numbers are left as numbers
    assert [row["score"] for row in rows] == ["0.9", "0.8", "0.7", "0.6"]
    assert all(float(row["centroid_x"]) > 0 for row in rows)
