"""cellseg_d2.evaluation.submission_check and tools/validate_submission.py: every violation the
checks catch, the report, and the tool's exit status (CPU, fast)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.rle import encode_mask
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import write_submission
from cellseg_d2.evaluation.submission_check import (
    format_report,
    require_valid_submission,
    validate_submission,
)
from tests.conftest import load_tool

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "validate_submission.py"


def _index_of_wide_box(results: list[dict]) -> int:
    """An entry whose box is wide enough to shrink by 5 px and stays clear of the borders."""
    return next(i for i, r in enumerate(results) if r["bbox"][2] >= 8 and r["bbox"][0] >= 3)


def test_oracle_submission_is_valid(dataset: tuple[Path, list[dict], list[dict]]) -> None:
    _, entries, results = dataset
    report = validate_submission(results, entries)
    assert report.ok and report.violations == []
    assert report.num_results == len(results)
    assert sum(report.detections_per_image.values()) == len(results)
    assert set(report.detections_per_image) == {entry["id"] for entry in entries}
    assert max(report.detections_per_image.values()) > 100  # the dense image
    expected = {k: sum(r["category_id"] == k for r in results) for k in range(1, 5)}
    assert report.detections_per_class == expected
    assert report.empty_masks == 0
    text = format_report(report)
    assert "violations: none" in text and "lymphocyte" in text


def test_category_range_follows_the_class_names(
    dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path, capsys
) -> None:
    root, entries, results = dataset
    six = [dict(r, category_id=6) if i == 0 else r for i, r in enumerate(results)]
    report = validate_submission(six, entries)
    assert not report.ok and "category_id 6 is not in 1..4" in report.violations[0]
    assert validate_submission(six, entries, num_classes=6).ok
    pred = tmp_path / "six.json"
    pred.write_text(json.dumps(six))
    tool = load_tool(TOOL)
    id_map = str(root / "test_image_name_to_ids.json")
    assert tool.main(["--id-map", id_map, "--pred", str(pred)]) == 2
    names = "a,b,c,d,e,f"
    assert tool.main(["--id-map", id_map, "--pred", str(pred), "--class-names", names]) == 0
    assert "f 1" in capsys.readouterr().out  # per-class counts by the given names


def _set(key: str, value: object):
    return lambda result, entries: result.__setitem__(key, value)


def _swap_rle_size(result: dict, entries: list[dict]) -> None:
    result["segmentation"] = {
        **result["segmentation"],
        "size": result["segmentation"]["size"][::-1],
    }


def _box_outside(result: dict, entries: list[dict]) -> None:
    width = next(e["width"] for e in entries if e["id"] == result["image_id"])
    x, y, _, h = result["bbox"]
    result["bbox"] = [x, y, width - x + 3.0, h]


def _box_shrunk(result: dict, entries: list[dict]) -> None:
    x, y, w, h = result["bbox"]
    result["bbox"] = [x, y, w - 5.0, h]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("image_id", 999), "image_id 999 is not in the id map"),
        (_set("image_id", True), "is not in the id map"),
        (_set("image_id", [1]), "is not in the id map"),
        (_set("category_id", [1]), "is not in 1..4"),
        (_set("category_id", 0), "category_id 0 is not in 1..4"),
        (_set("category_id", 5), "category_id 5 is not in 1..4"),
        (_swap_rle_size, "segmentation size"),
        (_box_outside, "is not inside image"),
        (_box_shrunk, "differs from the mask's tight box"),
        (_set("bbox", [1.0, 2.0, float("inf"), 3.0]), "bbox must be 4 finite numbers"),
        (_set("bbox", [1.0, 2.0, 3.0]), "bbox must be 4 finite numbers"),
        (_set("score", float("nan")), "score nan is not a finite number in [0, 1]"),
        (_set("score", 1.5), "score 1.5"),
        (_set("score", -0.1), "score -0.1"),
        (_set("segmentation", {"size": [1, 1], "counts": [0, 1]}), "compressed COCO RLE"),
        (lambda result, entries: result.pop("score"), "missing key(s) score"),
    ],
)
def test_each_violation_is_caught(
    dataset: tuple[Path, list[dict], list[dict]], mutate, expected: str
) -> None:
    _, entries, results = dataset
    results = copy.deepcopy(results)
    index = _index_of_wide_box(results)
    mutate(results[index], entries)
    report = validate_submission(results, entries)
    assert not report.ok
    assert all(message.startswith(f"result {index}:") for message in report.violations)
    assert any(expected in message for message in report.violations), report.violations


def test_small_box_offsets_and_empty_masks_pass(
    dataset: tuple[Path, list[dict], list[dict]],
) -> None:
    _, entries, results = dataset
    results = copy.deepcopy(results)
    x, y, w, h = results[0]["bbox"]
    results[0]["bbox"] = [x - 0.5, y + 1.0, w + 1.5, h - 1.0]  # within the 2 px tolerance
    first = entries[0]
    empty = encode_mask(np.zeros((first["height"], first["width"]), np.uint8))
    results.append({**results[1], "image_id": first["id"], "segmentation": empty})
    report = validate_submission(results, entries)
    assert report.ok, report.violations
    assert report.empty_masks == 1


def test_non_dict_entry_and_report_cap(dataset: tuple[Path, list[dict], list[dict]]) -> None:
    _, entries, results = dataset
    broken = [{**r, "category_id": 7} for r in results[:30]] + ["junk"]
    report = validate_submission(broken, entries)
    assert len(report.violations) == 31
    assert report.violations[-1].startswith("result 30: not a JSON object")
    text = format_report(report, max_violations=5)
    assert "violations: 31" in text and "... and 26 more" in text


def test_cli_exit_codes(
    dataset: tuple[Path, list[dict], list[dict]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    root, _, results = dataset
    tool = load_tool(TOOL)
    id_map = str(root / "test_image_name_to_ids.json")
    good = tmp_path / "good.zip"
    write_submission(results, good, zip_output=True)
    assert tool.main(["--id-map", id_map, "--pred", str(good)]) == 0
    assert "violations: none" in capsys.readouterr().out

    bad = tmp_path / "bad.json"
    write_submission([{**r, "image_id": 42} for r in results], bad, zip_output=False)
    assert tool.main(["--id-map", id_map, "--pred", str(bad), "--max-violations", "3"]) == 2
    captured = capsys.readouterr()
    assert "image_id 42 is not in the id map" in captured.out and "more" in captured.out
    assert str(bad) in captured.err

    assert tool.main(["--id-map", str(tmp_path / "nope.json"), "--pred", str(good)]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_cli_process_exit_status(
    dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path
) -> None:
    root, _, _ = dataset
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"not": "a list"}))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--id-map", str(root / "test_image_name_to_ids.json"),
         "--pred", str(broken)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "broken.json" in proc.stderr


def test_corrupt_rle_counts_are_violations(dataset: tuple[Path, list[dict], list[dict]]) -> None:
    _, entries, results = dataset
    results = copy.deepcopy(results)
    good = results[3]["segmentation"]
    height, width = good["size"]
    results[3]["segmentation"] = {**good, "counts": "oooooooooo1"}  # the example
    results[5]["segmentation"] = {**good, "counts": good["counts"] + "1"}  # one run too many
    report = validate_submission(results, entries)
    assert [v.split(":")[0] for v in report.violations] == ["result 3", "result 5"]
    assert f"image_id {results[3]['image_id']}" in report.violations[0]
    assert "corrupt" in report.violations[0] and "longer than" in report.violations[0]
    assert f"not {height}x{width}" in report.violations[1]


def test_huge_numbers_are_violations(dataset: tuple[Path, list[dict], list[dict]]) -> None:
    _, entries, results = dataset
    results = copy.deepcopy(results[:2])
    results[0]["score"] = 10**400
    results[1]["bbox"] = [10**400, 0, 1, 1]
    report = validate_submission(results, entries)
    assert [v.split(":")[0] for v in report.violations] == ["result 0", "result 1"]


def test_require_valid_submission_names_the_source(
    dataset: tuple[Path, list[dict], list[dict]],
) -> None:
    _, entries, results = dataset
    require_valid_submission(results, entries, "ok.json")  # a valid one passes silently
    with pytest.raises(CellDataError, match=r"bad\.json: 1 violation\(s\)") as info:
        require_valid_submission([{**results[0], "category_id": 9}], entries, "bad.json")
    assert "category_id 9 is not in 1..4" in str(info.value)
