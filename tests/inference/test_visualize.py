"""Tests for the figures of id-map and validation images and their command-line tool (CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import group_by_image, write_submission
from cellseg_d2.inference.figures import COUNT_BAR_HEIGHT, GAP
from cellseg_d2.inference.visualize import validation_id_map, visualize_predictions
from tests.conftest import load_tool

REPO = Path(__file__).resolve().parents[2]
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


def test_mask_of_wrong_size_is_rejected(dataset: tuple[Path, list[dict], list[dict]]) -> None:
    root, entries, results = dataset
    first, second = entries[:2]
    assert (first["height"], first["width"]) != (second["height"], second["width"])
    # A mask of the first image submitted for the second one.
    swapped = {second["id"]: [{**results[0], "image_id": second["id"]}]}
    with pytest.raises(CellDataError, match=second["file_name"]):
        visualize_predictions(root / "test_release", entries, swapped, root / "x.png", num_images=2)


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


def test_cli_outline_style(dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path) -> None:
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


SIX = ("a", "b", "c", "d", "e", "f")


def _cache_state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the dataset's conversion cache: its bytes and mtime."""
    cache = root / ".cellseg_cache"
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(cache.iterdir())}


@pytest.fixture(scope="module")
def six_class_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-class, 8-image training set whose cache training built with its six names."""
    from cellseg_d2.data.convert import load_train_coco
    from cellseg_d2.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("six")
    generate_synthetic_dataset(root, 8, 0, seed=3, min_size=64, max_size=96, num_classes=6)
    load_train_coco(root, class_names=SIX)
    return root


def test_validation_id_map_matches_the_converter_and_writes_nothing(tmp_path: Path) -> None:
    from cellseg_d2.data.convert import load_train_coco
    from cellseg_d2.data.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(tmp_path, 8, 0, seed=1, min_size=64, max_size=96)
    entries = validation_id_map(tmp_path, val_fraction=0.5, seed=1)
    assert not (tmp_path / ".cellseg_cache").exists()  # read only: no cache built
    assert 0 < len(entries) < 8
    coco = load_train_coco(tmp_path)
    by_folder = {image["folder"]: image for image in coco["images"]}
    for entry in entries:
        image = by_folder[entry["file_name"].split("/")[0]]
        assert (entry["id"], entry["height"], entry["width"]) == (
            image["id"], image["height"], image["width"],
        )  # fmt: skip
    folds = [{e["id"] for e in validation_id_map(tmp_path, 0.1, 1, k, 2)} for k in (0, 1)]
    assert not folds[0] & folds[1] and folds[0] | folds[1] == set(range(1, 9))  # a partition


def test_val_root_six_classes_reads_the_cache_settings_and_leaves_it_byte_identical(
    six_class_root: Path, tmp_path: Path
) -> None:
    from cellseg_d2.evaluation.scoring import ground_truth_as_results, load_ground_truth_coco

    before = _cache_state(six_class_root)
    entries = validation_id_map(six_class_root, val_fraction=0.5)  # names from the cache
    truth = load_ground_truth_coco(six_class_root / "train", entries)
    results = ground_truth_as_results(truth)
    assert max(r["category_id"] for r in results) > 4  # the fifth/sixth class is drawn
    pred = tmp_path / "val.json"
    write_submission(results, pred, zip_output=False)
    output = tmp_path / "val.png"
    args = ["--val-root", str(six_class_root), "--val-fraction", "0.5", "--pred", str(pred)]
    args += ["--output", str(output), "--num-images", "2", "--style", "outlines"]
    assert load_tool(TOOL).main(args) == 0
    height, width = _expected_size(sorted(entries, key=lambda e: e["id"])[:2], 3)
    rows = min(2, len(entries))
    assert cv2.imread(str(output)).shape[:2] == (height + rows * (GAP + COUNT_BAR_HEIGHT), width)
    assert _cache_state(six_class_root) == before


def test_val_root_with_a_config_uses_its_datasets_keys(
    six_class_root: Path, tmp_path: Path
) -> None:
    before = _cache_state(six_class_root)
    output = tmp_path / "model.png"
    config = REPO / "configs" / "quick_schedules" / "instant_test.yaml"
    args = ["--val-root", str(six_class_root), "--output", str(output), "--num-images", "1"]
    args += ["--config-file", str(config), "MODEL.DEVICE", "cpu", "DATASETS.VAL_FRACTION", "0.5"]
    args += ["DATASETS.CLASS_NAMES", repr(list(SIX)), "MODEL.ROI_HEADS.NUM_CLASSES", "6"]
    assert load_tool(TOOL).main(args) == 0
    first = sorted(validation_id_map(six_class_root, 0.5, class_names=SIX), key=lambda e: e["id"])
    assert cv2.imread(str(output)).shape[:2] == _expected_size(first[:1], 3)
    assert _cache_state(six_class_root) == before


def test_val_root_without_cache_takes_the_names_from_the_flag(
    six_class_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from cellseg_d2.evaluation.scoring import ground_truth_as_results, load_ground_truth_coco

    root = tmp_path / "copy"
    shutil.copytree(six_class_root / "train", root / "train")
    entries = validation_id_map(root, val_fraction=0.5, class_names=SIX)
    pred = tmp_path / "val.json"
    truth = load_ground_truth_coco(root / "train", entries)
    write_submission(ground_truth_as_results(truth), pred, zip_output=False)
    args = ["--val-root", str(root), "--val-fraction", "0.5", "--pred", str(pred)]
    output = tmp_path / "x.png"
    assert load_tool(TOOL).main([*args, "--output", str(output)]) == 2  # four default names
    err = capsys.readouterr().err
    assert re.search(r"class[56]\.tif: mask of class [56]", err) and "--class-names" in err
    assert not output.exists()
    args += ["--class-names", ",".join(SIX)]
    assert load_tool(TOOL).main([*args, "--output", str(output)]) == 0
    assert cv2.imread(str(output)) is not None
    assert not (root / ".cellseg_cache").exists()  # nothing converted or cached
