"""cellseg_d2.evaluation.submission: writing a submission (JSON or CodaBench zip) and grouping
its entries by image."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.evaluation.submission import group_by_image, write_submission
from cellseg_d2.evaluation.submission_read import RESULTS_FILE_NAME, read_submission


@pytest.mark.parametrize("zip_output", [True, False])
def test_write_read_round_trip(
    dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path, zip_output: bool
) -> None:
    _, _, results = dataset
    path = tmp_path / "out" / ("submission.zip" if zip_output else "results.json")
    numpy_scored = [{**r, "score": np.float32(0.5)} for r in results[:3]] + results[3:]
    write_submission(numpy_scored, path, zip_output=zip_output)
    assert zipfile.is_zipfile(path) == zip_output
    if zip_output:
        with zipfile.ZipFile(path) as archive:
            assert archive.namelist() == [RESULTS_FILE_NAME]
    loaded = read_submission(path)
    assert loaded[3:] == results[3:]
    assert loaded[0]["score"] == 0.5
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_failed_write_leaves_nothing(
    dataset: tuple[Path, list[dict], list[dict]], tmp_path: Path
) -> None:
    _, _, results = dataset
    path = tmp_path / "results.json"
    write_submission(results[:2], path, zip_output=False)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_submission([{**results[0], "score": math.nan}], path, zip_output=False)
    assert path.read_bytes() == before  # the old file is untouched
    assert os.listdir(tmp_path) == ["results.json"]


def test_group_by_image_keeps_order(dataset: tuple[Path, list[dict], list[dict]]) -> None:
    _, entries, results = dataset
    grouped = group_by_image(results)
    assert sorted(grouped) == sorted(e["id"] for e in entries)
    assert [r for group in grouped.values() for r in group] == sorted(
        results, key=lambda r: list(grouped).index(r["image_id"])
    )
