"""Tests for local scoring (COCO mask and box AP in percent) and its command-line tool."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.data.rle import decode_rle, encode_mask
from cellseg_d2.data.synthetic import generate_synthetic_dataset
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.scoring import (
    evaluate_submission,
    format_scores,
    ground_truth_as_results,
    ground_truth_folder,
    load_ground_truth_coco,
)
from cellseg_d2.evaluation.submission import write_submission
from tests.conftest import load_tool

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "evaluate_submission.py"
METRICS = ["AP", "AP50", "AP75", "AP-class1", "AP-class2", "AP-class3", "AP-class4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], dict]:
    """Three synthetic test images, the first dense (> 200 cells), and their COCO ground truth."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, 0, 3, seed=0, min_size=128, max_size=192)
    entries = load_id_map(root / "test_image_name_to_ids.json")
    return root, entries, load_ground_truth_coco(root / "test_gt", entries)


def test_ground_truth_coco(dataset: tuple[Path, list[dict], dict]) -> None:
    _, entries, gt = dataset
    assert [c["name"] for c in gt["categories"]] == ["class1", "class2", "class3", "class4"]
    assert [image["id"] for image in gt["images"]] == [entry["id"] for entry in entries]
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    annotation = gt["annotations"][0]
    assert decode_rle(annotation["segmentation"]).sum() == annotation["area"]
    assert annotation["iscrowd"] == 0 and annotation["category_id"] in range(1, 5)


def test_oracle_scores_100_beyond_100_detections(dataset: tuple[Path, list[dict], dict]) -> None:
    _, _, gt = dataset
    results = ground_truth_as_results(gt)
    per_image = np.bincount([r["image_id"] for r in results])
    # With pycocotools' default cap of 100 detections the dense image would lose recall.
    assert per_image.max() > 200
    scores = evaluate_submission(gt, results)
    assert list(scores) == ["segm", "bbox"]
    for iou_type in ("segm", "bbox"):
        assert list(scores[iou_type]) == METRICS
        for metric, value in scores[iou_type].items():
            assert value == pytest.approx(100.0), (iou_type, metric)


def _shift_masks(results: list[dict], pixels: int) -> list[dict]:
    """Move every mask (and its box) ``pixels`` to the right."""
    shifted = []
    for result in results:
        mask = np.roll(decode_rle(result["segmentation"]), pixels, axis=1)
        x, y, w, h = result["bbox"]
        shifted.append({**result, "segmentation": encode_mask(mask), "bbox": [x + pixels, y, w, h]})
    return shifted


@pytest.mark.parametrize("perturbation", ["drop", "shift", "wrong_class"])
def test_perturbed_submissions_score_lower(
    dataset: tuple[Path, list[dict], dict], perturbation: str
) -> None:
    _, _, gt = dataset
    results = ground_truth_as_results(gt)
    if perturbation == "drop":
        results = results[::2]
    elif perturbation == "shift":
        results = _shift_masks(results, 3)
    else:
        results = [{**r, "category_id": r["category_id"] % 4 + 1} if i % 3 == 0 else r
                   for i, r in enumerate(results)]  # fmt: skip
    scores = evaluate_submission(gt, results)
    assert scores["segm"]["AP"] < 90.0
    assert 0.0 < scores["segm"]["AP"]
    if perturbation == "shift":
        # A 3 px shift of a ~10 px cell keeps IoU above 0.5 but not above 0.75.
        assert scores["segm"]["AP50"] > scores["segm"]["AP75"]


def test_class_without_ground_truth_is_nan(dataset: tuple[Path, list[dict], dict]) -> None:
    root, entries, gt = dataset
    present = {(a["image_id"], a["category_id"]) for a in gt["annotations"]}
    entry, missing = next(
        (e, k) for e in entries for k in range(1, 5) if (e["id"], k) not in present
    )
    single = load_ground_truth_coco(root / "test_gt", [entry])
    scores = evaluate_submission(single, ground_truth_as_results(single))
    assert math.isnan(scores["segm"][f"AP-class{missing}"])
    assert scores["segm"]["AP"] == pytest.approx(100.0)
    text = format_scores(scores)
    assert text.splitlines()[0].split() == ["metric", "segm", "bbox"]
    assert "nan" in text


def test_rows_carry_the_given_class_names(dataset: tuple[Path, list[dict], dict]) -> None:
    """``--class-names`` label the per-class rows of both tables (and the JSON keys)."""
    from cellseg_d2.evaluation.histology import evaluate_histology, format_histology

    root, entries, _ = dataset
    names = ("tumour", "immune", "stroma", "necrosis")
    gt = load_ground_truth_coco(root / "test_gt", entries, names)
    assert [c["name"] for c in gt["categories"]] == list(names)
    results = ground_truth_as_results(gt)
    scores = evaluate_submission(gt, results)
    assert list(scores["segm"]) == ["AP", "AP50", "AP75", *(f"AP-{name}" for name in names)]
    rows = [line.split()[0] for line in format_scores(scores).splitlines()[1:]]
    assert rows[3:] == [f"AP-{name}" for name in names]
    histology = format_histology(evaluate_histology(gt, results), 0.5)
    class_rows = histology.split("class", 1)[1].splitlines()[1:]
    assert [line.split()[0] for line in class_rows] == list(names)
    assert "class1" not in format_scores(scores) + histology
    # fewer names than classes found: the rest keep their classK name
    two = load_ground_truth_coco(root / "test_gt", entries, names[:2])
    assert [c["name"] for c in two["categories"]] == ["tumour", "immune", "class3", "class4"]


def test_empty_submission_scores_zero(dataset: tuple[Path, list[dict], dict]) -> None:
    _, _, gt = dataset
    scores = evaluate_submission(gt, [])
    assert scores["segm"]["AP"] == 0.0 and scores["bbox"]["AP50"] == 0.0


def test_unknown_image_id_raises(dataset: tuple[Path, list[dict], dict]) -> None:
    _, _, gt = dataset
    results = ground_truth_as_results(gt)[:2]
    results[1] = {**results[1], "image_id": 77}
    with pytest.raises(CellDataError, match="77"):
        evaluate_submission(gt, results)


def test_ground_truth_errors(dataset: tuple[Path, list[dict], dict], tmp_path: Path) -> None:
    root, entries, _ = dataset
    with pytest.raises(CellDataError, match="not found"):
        load_ground_truth_coco(tmp_path / "nothing", entries)
    with pytest.raises(CellDataError, match="no mask folder"):
        load_ground_truth_coco(tmp_path, entries)
    wrong = [{**entries[0], "height": entries[0]["height"] + 1}]
    with pytest.raises(CellDataError, match="class"):
        load_ground_truth_coco(root / "test_gt", wrong)


def test_ground_truth_folder_rules(tmp_path: Path) -> None:
    assert ground_truth_folder(tmp_path, "abc.tif") == tmp_path / "abc"
    assert ground_truth_folder(tmp_path, "abc/image.tif") == tmp_path / "abc"
    assert ground_truth_folder(tmp_path, "train/abc/image.tif") == tmp_path / "train" / "abc"


def test_cli(
    dataset: tuple[Path, list[dict], dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, entries, gt = dataset
    tool = load_tool(TOOL)
    single = load_ground_truth_coco(root / "test_gt", entries[1:2])
    id_map = tmp_path / "ids.json"
    id_map.write_text(json.dumps(entries[1:2]))
    pred = tmp_path / "submission.zip"
    write_submission(ground_truth_as_results(single), pred, zip_output=True)
    out_json = tmp_path / "scores" / "scores.json"
    args = ["--gt", str(root / "test_gt"), "--id-map", str(id_map), "--pred", str(pred)]
    assert tool.main([*args, "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].split() == ["AP", "100.00", "100.00"]
    saved = json.loads(out_json.read_text())
    assert saved["segm"]["AP"] == pytest.approx(100.0)
    assert None in saved["segm"].values()  # a class absent from this image: null, not NaN
    assert "histology (IoU > 0.5, score >= 0.5)" in table and "AJI" in table
    assert "AP-epithelial" in saved["segm"] and "AP-class1" not in saved["segm"]  # named rows
    for key in ("PQ", "SQ", "DQ", "mPQ", "AJI", "F1", "precision", "recall"):
        assert saved["histology"][key] == pytest.approx(100.0), key

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**r, "score": 2.0} for r in ground_truth_as_results(single)]))
    assert (
        tool.main(["--gt", str(root / "test_gt"), "--id-map", str(id_map), "--pred", str(bad)]) == 2
    )
    assert "bad.json" in capsys.readouterr().err
    code = tool.main(["--gt", str(tmp_path / "none"), "--id-map", str(id_map), "--pred", str(pred)])
    assert code == 2
    assert "none" in capsys.readouterr().err


def test_inputs_are_not_modified(dataset: tuple[Path, list[dict], dict]) -> None:
    _, _, gt = dataset
    results = ground_truth_as_results(gt)[:5]
    before = copy.deepcopy((gt, results))
    evaluate_submission(gt, results)
    assert (gt, results) == before


@pytest.mark.parametrize(
    "name", ["../train/x/image.tif", "/etc/passwd", "sub/a.tif", "a\\b.tif", "C:a.tif", "", ".."]
)
def test_id_map_names_must_be_bare(
    dataset: tuple[Path, list[dict], dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    name: str,
) -> None:
    root, entries, gt = dataset
    id_map = tmp_path / "ids.json"
    id_map.write_text(json.dumps([entries[0], {**entries[1], "file_name": name}]))
    with pytest.raises(CellDataError, match=r"ids.json: entry 1: file_name"):
        load_id_map(id_map)
    pred = tmp_path / "submission.json"
    write_submission(ground_truth_as_results(gt), pred, zip_output=False)
    args = ["--gt", str(root / "test_gt"), "--id-map", str(id_map), "--pred", str(pred)]
    assert load_tool(TOOL).main(args) == 2
    assert "file_name" in capsys.readouterr().err


def test_id_map_hostile_json(tmp_path: Path) -> None:
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(CellDataError, match="nested.json: holds up to 50001 JSON values"):
        load_id_map(nested)  # one value per byte: refused before parsing (issue 16)
    nested.write_text("[" * 50_000 + " " * 400_000 + "]" * 50_000)  # sparse enough to parse
    with pytest.raises(CellDataError, match="nested.json: JSON nested too deeply"):
        load_id_map(nested)
    huge = tmp_path / "huge.json"
    entry = {"file_name": "a.tif", "id": 1, "height": 10, "width": 10}
    huge.write_text(json.dumps([entry]).replace('"id": 1', '"id": ' + "7" * 10_000))
    with pytest.raises(CellDataError, match="huge.json.*10000 digits"):
        load_id_map(huge)
    for key, value in (("id", 2**63), ("height", 0), ("width", 2**40)):
        wide = tmp_path / f"{key}.json"
        wide.write_text(json.dumps([{**entry, key: value}]))
        with pytest.raises(CellDataError, match=f"{key}.json: entry 0 has (an )?{key}"):
            load_id_map(wide)


def test_scorer_rejects_corrupt_rle(dataset: tuple[Path, list[dict], dict]) -> None:
    _, _, gt = dataset
    results = ground_truth_as_results(gt)[:3]
    results[2] = {**results[2], "segmentation": {**results[2]["segmentation"], "counts": "1"}}
    with pytest.raises(CellDataError, match=rf"result 2 \(image_id {results[2]['image_id']}\)"):
        evaluate_submission(gt, results)
