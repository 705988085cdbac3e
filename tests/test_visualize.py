"""Tests for the prediction figures and their command-line tool (CPU, well under a second each)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cellseg_d2.data.io import read_image
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.submission import group_by_image, write_submission
from cellseg_d2.inference.visualize import (
    GAP,
    compose_figure,
    render_comparison,
    visualize_predictions,
)
from cellseg_d2.utils.layout import class_colors

from .conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "visualize.py"


def _expected_size(entries: list[dict], panels: int) -> tuple[int, int]:
    """(height, width) of a figure: rows stacked with GAP between, panels side by side."""
    height = sum(e["height"] for e in entries) + GAP * (len(entries) - 1)
    width = max(panels * e["width"] + GAP * (panels - 1) for e in entries)
    return height, width


@pytest.mark.parametrize("with_gt", [True, False])
def test_figure_png_has_expected_size(
    dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path, with_gt: bool
) -> None:
    root, entries, results = dataset
    output = tmp_path / "figures" / "predictions.png"
    figure = visualize_predictions(
        root / "test_release",
        entries,
        group_by_image(results),
        output,
        gt_dir=root / "test_gt" if with_gt else None,
        num_images=5,  # more than the map holds: all three are drawn
    )
    expected = _expected_size(entries, 3 if with_gt else 2)
    assert figure.shape == (*expected, 3) and figure.dtype == np.uint8
    written = cv2.imread(str(output), cv2.IMREAD_COLOR)
    assert written.shape == (*expected, 3)
    assert np.array_equal(written[:, :, ::-1], figure)
    assert [p.name for p in output.parent.iterdir()] == ["predictions.png"]


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


def test_mask_of_wrong_size_is_rejected(dataset: tuple[Path, list[dict], list[dict]]) -> None:
    root, entries, results = dataset
    first, second = entries[:2]
    assert (first["height"], first["width"]) != (second["height"], second["width"])
    # A mask of the first image submitted for the second one.
    swapped = {second["id"]: [{**results[0], "image_id": second["id"]}]}
    with pytest.raises(CellDataError, match=second["file_name"]):
        visualize_predictions(root / "test_release", entries, swapped, root / "x.png", num_images=2)


def test_compose_pads_narrow_rows_with_white() -> None:
    rows = [np.zeros((10, 30, 3), np.uint8), np.zeros((5, 20, 3), np.uint8)]
    figure = compose_figure(rows)
    assert figure.shape == (10 + GAP + 5, 30, 3)
    assert (figure[10 : 10 + GAP] == 255).all()
    assert (figure[10 + GAP :, 20:] == 255).all() and (figure[10 + GAP :, :20] == 0).all()


def test_cli(dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path) -> None:
    root, entries, results = dataset
    tool = load_tool(TOOL)
    pred = tmp_path / "submission.zip"
    write_submission(results, pred, zip_output=True)
    output = tmp_path / "figure.png"
    common = ["--input", str(root / "test_release"), "--id-map"]
    common += [str(root / "test_image_name_to_ids.json"), "--output", str(output)]
    code = tool.main([*common, "--pred", str(pred), "--gt", str(root / "test_gt"),
                      "--num-images", "2", "--score-thresh", "0.3"])  # fmt: skip
    assert code == 0
    assert cv2.imread(str(output)).shape[:2] == _expected_size(entries[:2], 3)
    bad = tmp_path / "bad.json"
    write_submission([{**r, "category_id": 0} for r in results], bad, zip_output=False)
    output.unlink()
    assert tool.main([*common, "--pred", str(bad)]) == 2
    assert not output.exists()


def test_cli_predicts_with_a_config(
    dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path
) -> None:
    root, entries, _ = dataset
    tool = load_tool(TOOL)
    output = tmp_path / "model.png"
    config = REPO / "configs" / "quick_schedules" / "instant_test.yaml"
    code = tool.main(
        [
            "--input",
            str(root / "test_release"),
            "--id-map",
            str(root / "test_image_name_to_ids.json"),
        ]
        + ["--output", str(output), "--num-images", "1", "--score-thresh", "0.0"]
        + ["--config-file", str(config), "MODEL.DEVICE", "cpu"]
    )
    assert code == 0
    assert cv2.imread(str(output)).shape[:2] == _expected_size(entries[:1], 2)


def test_cli_draws_validation_images_with_ground_truth(
    synthetic_root: Path, tmp_path: Path
) -> None:
    from cellseg_d2.inference.visualize import validation_id_map

    entries = validation_id_map(synthetic_root, val_fraction=0.25)
    assert entries and all(e["file_name"].endswith("/image.tif") for e in entries)
    output = tmp_path / "val.png"
    config = REPO / "configs" / "quick_schedules" / "instant_test.yaml"
    code = load_tool(TOOL).main(
        ["--val-root", str(synthetic_root), "--val-fraction", "0.25", "--output", str(output)]
        + ["--num-images", "1", "--config-file", str(config), "MODEL.DEVICE", "cpu"]
    )
    assert code == 0
    first = sorted(entries, key=lambda e: e["id"])[:1]
    assert cv2.imread(str(output)).shape[:2] == _expected_size(first, 3)


def test_outline_style_draws_class_coloured_outlines_and_count_bars() -> None:
    from cellseg_d2.data.rle import encode_mask
    from cellseg_d2.inference.visualize import COUNT_BAR_HEIGHT
    from cellseg_d2.utils.layout import THING_COLORS

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
    row = render_comparison(image, predictions, [cell], style="outlines")
    assert row.shape == (height + GAP + COUNT_BAR_HEIGHT, 3 * width + 2 * GAP, 3)
    prediction_panel = row[:height, 2 * (width + GAP) :]
    gt_panel = row[:height, width + GAP : 2 * width + GAP]
    for panel in (prediction_panel, gt_panel):
        for y, x in [(25, 30), (44, 30), (35, 20), (35, 39)]:  # the square's border
            assert tuple(panel[y, x]) == THING_COLORS[1]
        assert tuple(panel[35, 30]) == (100, 100, 100)  # inside: the image, no fill
        assert tuple(panel[24, 30]) == (100, 100, 100)  # outside: untouched
    assert tuple(prediction_panel[50, 60]) == THING_COLORS[0]
    assert tuple(gt_panel[50, 60]) == (100, 100, 100)
    strip = row[height + GAP :]
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert {THING_COLORS[0], THING_COLORS[1], (150, 150, 150)} <= colours
    # The box style keeps its own shape (no strip).
    assert render_comparison(image, predictions, [cell]).shape[0] == height
    with pytest.raises(ValueError, match="style"):
        render_comparison(image, predictions, style="pie")


def test_cli_outline_style(dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path) -> None:
    from cellseg_d2.inference.visualize import COUNT_BAR_HEIGHT

    root, entries, results = dataset
    pred = tmp_path / "submission.json"
    write_submission(results, pred, zip_output=False)
    output = tmp_path / "outlines.png"
    args = [
        "--input", str(root / "test_release"),
        "--id-map", str(root / "test_image_name_to_ids.json"),
        "--pred", str(pred), "--gt", str(root / "test_gt"),
        "--output", str(output), "--style", "outlines",
    ]  # fmt: skip
    assert load_tool(TOOL).main(args) == 0
    height, width = _expected_size(entries, 3)
    written = cv2.imread(str(output), cv2.IMREAD_COLOR)
    assert written.shape == (height + len(entries) * (GAP + COUNT_BAR_HEIGHT), width, 3)


def test_cli_names_classes_from_the_flag(
    dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path
) -> None:
    root, _, results = dataset
    pred = tmp_path / "six.json"
    write_submission([{**r, "category_id": 6} for r in results], pred, zip_output=False)
    args = [
        "--input", str(root / "test_release"),
        "--id-map", str(root / "test_image_name_to_ids.json"),
        "--pred", str(pred), "--num-images", "1", "--style", "outlines",
    ]  # fmt: skip
    tool = load_tool(TOOL)
    assert tool.main([*args, "--output", str(tmp_path / "four.png")]) == 2  # category 6 of 4
    figures = []
    for names in ("a,b,c,d,e,f", "a,b,c,d,e,a_much_longer_sixth_name"):
        output = tmp_path / f"{len(names)}.png"
        assert tool.main([*args, "--output", str(output), "--class-names", names]) == 0
        figures.append(cv2.imread(str(output), cv2.IMREAD_COLOR))
    assert figures[0].shape == figures[1].shape
    assert not np.array_equal(figures[0], figures[1])  # the count bars carry the names
