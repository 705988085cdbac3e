"""Tests for the drawing of figure rows and figures (CPU, well under a second each)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cellseg_d2.data.io import read_image
from cellseg_d2.data.rle import encode_mask
from cellseg_d2.evaluation.submission import group_by_image
from cellseg_d2.inference.figures import (
    COUNT_BAR_HEIGHT,
    GAP,
    compose_figure,
    render_comparison,
    write_png,
)
from cellseg_d2.utils.layout import class_colors


def test_render_draws_predictions_above_threshold(
    dataset: tuple[Path, list[dict], list[dict]],
) -> None:
    root, entries, results = dataset
    entry = entries[0]
    image = read_image(root / "test_release" / entry["file_name"])
    height, width = image.shape[:2]
    predictions = group_by_image(results)[entry["id"]]
    row = render_comparison(image, predictions, score_thresh=0.5)
    assert row.shape == (height, 2 * width + GAP, 3) and row.dtype == np.uint8
    original, drawn = row[:, :width], row[:, width + GAP :]
    assert np.array_equal(original[40:], image[40:, :, ::-1])  # RGB; below the title
    assert (drawn != original).any(axis=2).mean() > 0.05
    assert (row[:, width : width + GAP] == 255).all()
    # Below the threshold nothing is drawn except the panel title.
    faint = [{**p, "score": 0.1} for p in predictions]
    row = render_comparison(image, faint, score_thresh=0.5)
    assert np.array_equal(row[40:, width + GAP :], row[40:, :width])


def test_render_draws_classes_beyond_the_fourth(
    dataset: tuple[Path, list[dict], list[dict]],
) -> None:
    root, entries, results = dataset
    entry = entries[0]
    image = read_image(root / "test_release" / entry["file_name"])
    six = [{**p, "category_id": 6} for p in group_by_image(results)[entry["id"]]]
    row = render_comparison(image, six, score_thresh=0.5)
    drawn = row[:, image.shape[1] + GAP :].reshape(-1, 3)
    sixth = np.array(class_colors(6)[5], np.uint8)
    assert (drawn == sixth).all(axis=1).any()  # box edges in the sixth class's colour


def test_render_with_ground_truth_has_three_panels(
    dataset: tuple[Path, list[dict], list[dict]],
) -> None:
    root, entries, results = dataset
    entry = entries[1]
    image = read_image(root / "test_release" / entry["file_name"])
    ground_truth = [{k: v for k, v in r.items() if k != "score"} for r in results]
    ground_truth = [g for g in ground_truth if g["image_id"] == entry["id"]]
    row = render_comparison(image, [], ground_truth)
    width = image.shape[1]
    assert row.shape == (image.shape[0], 3 * width + 2 * GAP, 3)
    gt_panel, prediction_panel = row[:, width + GAP : 2 * width + GAP], row[:, -width:]
    assert (gt_panel[40:] != prediction_panel[40:]).any()


def test_render_rejects_a_mask_of_another_size() -> None:
    image = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((30, 20), bool)
    mask[2:5, 2:5] = True
    wrong = {"category_id": 1, "bbox": [2.0, 2.0, 3.0, 3.0], "score": 0.9}
    wrong["segmentation"] = encode_mask(mask)
    for style in ("boxes", "outlines"):
        with pytest.raises(ValueError, match="does not fit the 20x30 image"):
            render_comparison(image, [wrong], style=style)


def test_compose_pads_narrow_rows_with_white() -> None:
    rows = [np.zeros((10, 30, 3), np.uint8), np.zeros((5, 20, 3), np.uint8)]
    figure = compose_figure(rows)
    assert figure.shape == (10 + GAP + 5, 30, 3)
    assert (figure[10 : 10 + GAP] == 255).all()
    assert (figure[10 + GAP :, 20:] == 255).all() and (figure[10 + GAP :, :20] == 0).all()
    with pytest.raises(ValueError, match="at least one row"):
        compose_figure([])


def test_write_png_round_trips_rgb_and_leaves_no_temp_file(tmp_path: Path) -> None:
    figure = np.zeros((6, 9, 3), np.uint8)
    figure[:, :, 0] = 200  # red in RGB
    figure[2, 3] = (1, 2, 3)
    output = tmp_path / "out" / "figure.png"
    write_png(figure, output)
    written = cv2.imread(str(output), cv2.IMREAD_COLOR)
    assert np.array_equal(written[:, :, ::-1], figure)
    assert [p.name for p in output.parent.iterdir()] == ["figure.png"]


def test_outline_style_draws_class_coloured_outlines_and_count_bars() -> None:
    height, width = 70, 80
    image = np.full((height, width, 3), 100, np.uint8)
    square = np.zeros((height, width), bool)
    square[25:45, 20:40] = True
    other = np.zeros((height, width), bool)
    other[50:60, 50:70] = True
    cell = {"category_id": 2, "bbox": [20.0, 25.0, 20.0, 20.0], "segmentation": encode_mask(square)}
    predictions = [
        {**cell, "score": 0.9},
        {"category_id": 1, "bbox": [50.0, 50.0, 20.0, 10.0], "score": 0.8,
         "segmentation": encode_mask(other)},
    ]  # fmt: skip
    first, second = class_colors(2)
    row = render_comparison(image, predictions, [cell], style="outlines")
    assert row.shape == (height + GAP + COUNT_BAR_HEIGHT, 3 * width + 2 * GAP, 3)
    prediction_panel = row[:height, 2 * (width + GAP) :]
    gt_panel = row[:height, width + GAP : 2 * width + GAP]
    for panel in (prediction_panel, gt_panel):
        for y, x in [(25, 30), (44, 30), (35, 20), (35, 39)]:  # the square's border
            assert tuple(panel[y, x]) == second
        assert tuple(panel[35, 30]) == (100, 100, 100)  # inside: the image, no fill
        assert tuple(panel[24, 30]) == (100, 100, 100)  # outside: untouched
    assert tuple(prediction_panel[50, 60]) == first
    assert tuple(gt_panel[50, 60]) == (100, 100, 100)
    strip = row[height + GAP :]
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert {first, second, (150, 150, 150)} <= colours
    # The box style keeps its own shape (no strip).
    assert render_comparison(image, predictions, [cell]).shape[0] == height
    with pytest.raises(ValueError, match="style"):
        render_comparison(image, predictions, style="pie")
