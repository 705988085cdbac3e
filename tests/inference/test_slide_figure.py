"""Tests for cellseg_d2.inference.slide_figure and the ``visualize.py --slide`` mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.inference.slide_figure import render_slide_region
from cellseg_d2.utils.layout import class_color
from tests.conftest import load_tool
from tests.inference.slide_fakes import slide_cell

GREY = 200


def _slide_and_store(tmp_path: Path) -> tuple[Path, Path]:
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, np.full((96, 128, 3), GREY, np.uint8), photometric="rgb")
    store = tmp_path / "slide.cells.sqlite"
    settings = {"slide": "slide.tif", "width": 128, "height": 96, "offset": [0, 0]}
    with CellStore.create(store, settings) as cells:
        cells.write_chunk(0, [0], [slide_cell(10, 10, category=0, size=8)])
        cells.write_chunk(1, [1], [slide_cell(100, 70, category=1, size=8)])
        cells.finish()
    return slide, store


def test_outlines_in_class_colours_only_for_cells_in_the_region(tmp_path: Path) -> None:
    slide, store = _slide_and_store(tmp_path)
    figure, drawn = render_slide_region(slide, store, (0, 0, 64, 48))
    assert figure.shape == (48, 64, 3) and drawn == 1
    assert tuple(figure[10, 14]) == class_color(0)  # on the square's top edge (y = 10)
    assert tuple(figure[14, 14]) == (GREY,) * 3  # inside: the slide's own pixels
    assert tuple(figure[40, 50]) == (GREY,) * 3
    whole, drawn = render_slide_region(slide, store, (0, 0, 128, 96), downsample=2)
    assert whole.shape == (48, 64, 3) and drawn == 2
    assert tuple(whole[35, 50]) == class_color(1)  # (100, 70) / 2


def test_bad_regions_and_foreign_stores_are_refused(tmp_path: Path) -> None:
    slide, store = _slide_and_store(tmp_path)
    with pytest.raises(CellDataError, match="outside"):
        render_slide_region(slide, store, (100, 0, 64, 48))
    with pytest.raises(CellDataError, match="downsample"):
        render_slide_region(slide, store, (0, 0, 64, 48), downsample=0.5)
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.zeros((50, 50, 3), np.uint8), photometric="rgb")
    with pytest.raises(CellDataError, match="another size"):
        render_slide_region(other, store, (0, 0, 10, 10))


def test_the_tool_writes_the_png_and_exits_2_on_bad_input(tmp_path: Path) -> None:
    tool = load_tool(Path(__file__).resolve().parents[2] / "tools" / "visualize.py")
    slide, store = _slide_and_store(tmp_path)
    out = tmp_path / "cells.png"
    argv = ["--slide", str(slide), "--cells", str(store), "--output", str(out)]
    assert tool.main([*argv, "--region", "0,0,128,96"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tool.main([*argv, "--region", "0,0,500,96"]) == 2
