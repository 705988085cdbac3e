"""collect_inputs: folders, files and list files of images and slides; ids without an id map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellseg_d2.data.io import read_image, write_tiff
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.inputs import (
    assign_image_ids,
    collect_inputs,
    is_whole_slide,
    write_assigned_ids,
)

SLIDES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "slides"


def _png(path: Path, height: int = 20, width: int = 30) -> Path:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = 200  # red
    Image.fromarray(rgb).save(path)
    return path


def _pyramid(path: Path) -> Path:
    """A tiled 2-level TIFF pyramid (what a slide scanner or QuPath export writes)."""
    data = np.full((256, 256, 3), 200, np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(data, tile=(64, 64), subifds=1, photometric="rgb")
        tif.write(data[::2, ::2], tile=(64, 64), subfiletype=1, photometric="rgb")
    return path


def test_folder_sorts_images_and_slides_and_ignores_the_rest(tmp_path: Path) -> None:
    _png(tmp_path / "b.png")
    write_tiff(tmp_path / "a.tif", np.zeros((16, 16, 3), np.uint8))
    _pyramid(tmp_path / "slide.tif")
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    inputs = collect_inputs(tmp_path)
    assert list(inputs.images) == ["a.tif", "b.png"]
    assert inputs.slides == [tmp_path / "slide.tif"]
    assert len(inputs.ignored) == 1 and "notes.md" in inputs.ignored[0]


def test_flat_tiff_is_an_image_and_a_pyramid_is_a_slide(tmp_path: Path) -> None:
    write_tiff(tmp_path / "flat.tif", np.zeros((16, 16, 3), np.uint8))
    assert not is_whole_slide(tmp_path / "flat.tif")
    assert is_whole_slide(_pyramid(tmp_path / "p.tif"))
    assert not is_whole_slide(_png(tmp_path / "x.png"))


def test_list_file_paths_relative_to_the_list(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _png(tmp_path / "one" / "x.png")
    _png(tmp_path / "two" / "y.png")
    listing = tmp_path / "inputs.txt"
    listing.write_text("# images\none/x.png\n\n" + str(tmp_path / "two" / "y.png") + "\n")
    inputs = collect_inputs(listing)
    assert inputs.images == {
        "x.png": tmp_path / "one" / "x.png",
        "y.png": tmp_path / "two" / "y.png",
    }
    listing.write_text("one/x.png\nmissing.png\n")
    with pytest.raises(CellDataError, match=r"inputs.txt, line 2: .*missing.png: file not found"):
        collect_inputs(listing)


def test_same_file_name_in_two_folders_is_refused_naming_both(tmp_path: Path) -> None:
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
        _png(tmp_path / sub / "x.png")
    listing = tmp_path / "l.lst"
    listing.write_text("one/x.png\ntwo/x.png\n")
    with pytest.raises(CellDataError, match=r"one/x.png and .*two/x.png|two/x.png and .*one/x.png"):
        collect_inputs(listing)


def test_single_file_missing_and_empty_inputs(tmp_path: Path) -> None:
    png = _png(tmp_path / "x.png")
    assert list(collect_inputs(png).images) == ["x.png"]
    with pytest.raises(CellDataError, match="input not found"):
        collect_inputs(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CellDataError, match="no image or slide files"):
        collect_inputs(empty)
    (tmp_path / "doc.md").write_text("x")
    with pytest.raises(CellDataError, match="not an image or slide format"):
        collect_inputs(tmp_path / "doc.md")


def test_ids_in_sorted_name_order_with_header_sizes(tmp_path: Path) -> None:
    images = {"b.png": _png(tmp_path / "b.png", 20, 30), "a.png": _png(tmp_path / "a.png", 7, 9)}
    entries = assign_image_ids(images)
    assert entries == [
        {"file_name": "a.png", "id": 1, "height": 7, "width": 9},
        {"file_name": "b.png", "id": 2, "height": 20, "width": 30},
    ]
    path = write_assigned_ids(entries, tmp_path / "out" / "ids.json")
    assert json.loads(path.read_text()) == entries


def test_png_reads_with_the_tiff_rules(tmp_path: Path) -> None:
    bgr = read_image(_png(tmp_path / "x.png"))
    assert bgr.shape == (20, 30, 3) and bgr.dtype == np.uint8
    assert bgr[0, 0].tolist() == [0, 0, 200]  # red in BGR


def test_real_svs_is_a_slide() -> None:
    svs = SLIDES / "cmu-1-small-region.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} absent (../shared not beside the checkout)")
    assert is_whole_slide(svs)
    assert collect_inputs(svs).slides == [svs]
