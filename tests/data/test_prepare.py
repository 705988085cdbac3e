"""cellseg_d2.data.prepare and tools/prepare_dataset.py: the validation run and its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.io import write_tiff
from cellseg_d2.data.prepare import DatasetSummary, format_summary, prepare_cell_dataset
from cellseg_d2.errors import CellDataError
from tests.conftest import REPO_ROOT, load_tool
from tests.data.tiny_dataset import make_dataset, rgba_image

PREPARE_TOOL = REPO_ROOT / "tools" / "prepare_dataset.py"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "cells")


def _prepare_main(argv: list[str]) -> int:
    return load_tool(PREPARE_TOOL).main(argv)


def test_folder_without_masks_is_a_warning_and_strict_makes_it_an_error(dataset: Path) -> None:
    write_tiff(dataset / "train" / "empty" / "image.tif", rgba_image(20, 20))
    (dataset / "train" / "b" / "notes.txt").write_text("stray")
    summary = prepare_cell_dataset(dataset)
    assert summary.train_images == 3 and summary.empty_images == ["empty"]
    assert len(summary.warnings) == 2
    assert any("empty: no class1..4.tif mask" in w for w in summary.warnings)
    with pytest.raises(CellDataError, match="strict") as info:
        prepare_cell_dataset(dataset, strict=True)
    assert "notes.txt" in str(info.value)


def test_prepare_tool_ok_and_exit_2_naming_the_file(
    dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _prepare_main(["--root", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "training images:   2" in out and "dropped (small): 1" in out
    write_tiff(dataset / "train" / "a" / "class5.tif", np.zeros((20, 24)))
    assert _prepare_main(["--root", str(dataset)]) == 2
    assert "class5.tif" in capsys.readouterr().err


def test_prepare_tool_strict(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    write_tiff(dataset / "train" / "empty" / "image.tif", rgba_image(20, 20))
    assert _prepare_main(["--root", str(dataset), "--min-area", "1"]) == 0
    assert _prepare_main(["--root", str(dataset), "--strict"]) == 2
    assert "train/empty" in capsys.readouterr().err


def test_format_summary_lists_counts_warnings_and_caches() -> None:
    summary = DatasetSummary(
        train_images=3,
        empty_images=["empty"],
        instances_per_class={"a": 5, "b": 0},
        dropped_small=2,
        warnings=["train/x: stray file"],
        cache_files=[Path("/data/.cellseg_cache/instances_train.json")],
    )
    lines = format_summary(summary).splitlines()
    assert lines[:3] == ["training images:   3", "  without cells:   1", "  instances:       5"]
    assert "    a:             5" in lines and "  dropped (small): 2" in lines
    assert "test images:       none" in lines and "  train/x: stray file" in lines
    assert lines[-1] == "cache: /data/.cellseg_cache/instances_train.json"
