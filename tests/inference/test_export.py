"""Exports beyond the submission: label images, QuPath GeoJSON and the per-cell table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon

from cellseg_d2.data import decode_rle, label_image_to_instances
from cellseg_d2.data.io import read_tiff
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.export import (
    CSV_COLUMNS,
    cell_table_rows,
    detections_to_label_images,
    export_paths,
    mask_to_polygons,
    spreadsheet_safe,
    write_geojson,
    write_label_images,
)
from cellseg_d2.inference.predictor import detections_to_results
from cellseg_d2.utils.layout import class_color

CLASS_NAMES = ["epithelial", "lymphocyte", "neutrophil", "macrophage"]


def _synthetic_detections(seed: int = 0, size: tuple[int, int] = (128, 160)) -> list[Detection]:
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


def _full_masks(detections: list[Detection], height: int, width: int) -> list[np.ndarray]:
    """The detections' masks at image size, through the submission's RLEs."""
    results = detections_to_results(detections, 1, height, width)
    return [decode_rle(r["segmentation"]) for r in results]


def test_label_images_round_trip_higher_score_wins(tmp_path: Path) -> None:
    height, width = 128, 160
    detections = _synthetic_detections()
    # two overlapping squares on top: the higher score must own the shared pixels
    square = np.ones((12, 12), bool)
    low, high = Detection(0, 0.30, 2, 2, square), Detection(3, 0.95, 8, 8, square)
    detections += [low, high]
    labels = detections_to_label_images(detections, height, width)
    paths = export_paths(tmp_path, "img.tif")
    write_label_images(labels, paths["instances"], paths["classes"])
    instances, classes = read_tiff(paths["instances"]), read_tiff(paths["classes"])
    assert instances.dtype == np.uint16
    assert np.array_equal(instances, labels.instances)

    # the same instances as the RLE results, painted by descending score into free pixels
    masks = _full_masks(detections, height, width)
    expected = np.zeros((height, width), np.int64)
    expected_classes = np.zeros((height, width), np.int64)
    next_id = 0
    for index in sorted(range(len(detections)), key=lambda i: -detections[i].score):
        free = masks[index] & (expected == 0)
        if free.any():
            next_id += 1
            expected[free] = next_id
            expected_classes[free] = detections[index].category + 1
    assert np.array_equal(instances, expected)
    assert np.array_equal(classes, expected_classes)
    assert sorted(np.unique(instances))[1:] == list(range(1, len(labels.kept) + 1))
    overlap = np.zeros((height, width), bool)
    overlap[8:14, 8:14] = True
    high_id = labels.kept.index(high) + 1
    assert (instances[overlap] == high_id).all() and (classes[overlap] == 4).all()


def test_label_images_switch_to_uint32_above_65535_cells() -> None:
    pixel = np.ones((1, 1), bool)
    detections = [Detection(0, 0.5, i // 300, i % 300, pixel) for i in range(65536)]
    labels = detections_to_label_images(detections, 300, 300)
    assert labels.instances.dtype == np.uint32
    assert int(labels.instances.max()) == 65536
    assert len(labels.kept) == 65536


def _rasterise(geometry: dict, height: int, width: int) -> np.ndarray:
    """Fill a GeoJSON (Multi)Polygon in pixel-corner coordinates by pixel-centre sampling."""
    pieces = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    out = np.zeros((height, width), bool)
    for piece in pieces:
        for ring_index, ring in enumerate(piece):
            xy = np.asarray(ring)
            rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, (height, width))
            filled = np.zeros((height, width), bool)
            filled[rr, cc] = True
            out = out | filled if ring_index == 0 else out & ~filled
    return out


def test_geojson_polygons_rasterise_back_to_masks(tmp_path: Path) -> None:
    height, width = 128, 160
    detections = _synthetic_detections(seed=1)
    ring = np.ones((15, 15), bool)
    ring[5:10, 5:10] = False  # a cell with a hole
    two_pieces = np.zeros((6, 12), bool)
    two_pieces[:, :4] = two_pieces[:, 8:] = True
    detections += [Detection(2, 0.7, 100, 130, ring), Detection(1, 0.6, 5, 140, two_pieces)]
    path = export_paths(tmp_path, "img.tif")["geojson"]
    write_geojson(path, detections, CLASS_NAMES)
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(detections)
    masks = _full_masks(detections, height, width)
    checked = 0
    for det, mask, feature in zip(detections, masks, features):
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"] == {
            "name": CLASS_NAMES[det.category],
            "color": list(class_color(det.category)),
        }
        assert properties["measurements"]["score"] == det.score
        drawn = _rasterise(feature["geometry"], height, width)
        if mask.sum() > 20:
            iou = (drawn & mask).sum() / (drawn | mask).sum()
            assert iou > 0.95, (det.top, det.left, iou)
            checked += 1
    assert checked > 10
    hole_feature = features[-2]["geometry"]
    assert hole_feature["type"] == "Polygon" and len(hole_feature["coordinates"]) == 2
    drawn = _rasterise(hole_feature, height, width)
    assert not drawn[105:110, 135:140].any() and drawn[100:115, 130:145].sum() == ring.sum()
    assert features[-1]["geometry"]["type"] == "MultiPolygon"
    assert len(features[-1]["geometry"]["coordinates"]) == 2


def test_polygon_of_island_in_hole_is_its_own_piece() -> None:
    mask = np.ones((11, 11), bool)
    mask[2:9, 2:9] = False
    mask[4:7, 4:7] = True  # an island inside the hole
    pieces = mask_to_polygons(mask, top=10, left=20)
    assert sorted(len(piece) for piece in pieces) == [1, 2]
    xs = [x for piece in pieces for ring in piece for x, _ in ring]
    assert min(xs) == 20.0 and max(xs) == 31.0  # pixel corners: left edge to right edge


def test_cell_table_rows_one_per_kept_cell() -> None:
    height, width = 128, 160
    detections = _synthetic_detections(seed=2)
    detections.append(Detection(0, 0.01, detections[0].top, detections[0].left, detections[0].mask))
    labels = detections_to_label_images(detections, height, width)
    assert len(labels.kept) == len(detections) - 1  # the low-score copy is hidden entirely
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 2] = 200  # BGR: red channel
    text = cell_table_rows(labels, image, "img.tif", 7, CLASS_NAMES)
    rows = list(csv.DictReader(io.StringIO(",".join(CSV_COLUMNS) + "\n" + text)))
    assert len(rows) == len(labels.kept)
    assert [int(row["id"]) for row in rows] == list(range(1, len(labels.kept) + 1))
    for row in rows:
        cell = labels.instances == int(row["id"])
        det = labels.kept[int(row["id"]) - 1]
        assert int(row["area"]) == int(cell.sum())
        assert row["class_name"] == CLASS_NAMES[det.category]
        assert int(row["class_id"]) == det.category + 1
        assert row["image"] == "img.tif" and row["image_id"] == "7"
        assert float(row["mean_intensity_r"]) == 200.0 and float(row["mean_intensity_b"]) == 0.0
        ys, xs = np.nonzero(cell)
        assert int(row["bbox_x0"]) == xs.min() and int(row["bbox_x1"]) == xs.max() + 1
        assert abs(float(row["centroid_x"]) - xs.mean()) < 1e-3
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
    text = cell_table_rows(labels, image, image_name, 3, names)
    rows = list(csv.DictReader(io.StringIO(",".join(CSV_COLUMNS) + "\n" + text)))
    assert [row["class_name"] for row in rows] == ["'" + name for name in names]
    assert {row["image"] for row in rows} == {"'" + image_name}
    # numbers are left as numbers
    assert [row["score"] for row in rows] == ["0.9", "0.8", "0.7", "0.6"]
    assert all(float(row["centroid_x"]) > 0 for row in rows)
