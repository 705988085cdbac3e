"""Slide reading through :func:`open_slide`: the real slides of ``../shared/data/slides``
(skipped when absent), OpenSlide's bounds, the errors that name the file, and the pixel-size and
file-name rules of :mod:`cellseg_d2.data.slide`. The shared reader base is tested in
test_slide_base.py, the tifffile and in-memory readers in test_slide_tiff.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from cellseg_d2.data.slide import (
    OpenSlideReader,
    SlideInfo,
    is_slide_file,
    open_slide,
    resolve_pixel_size,
)
from cellseg_d2.errors import CellDataError
from tests.data.slide_helpers import real_slide

# --- real slides --------------------------------------------------------------------------------


def test_real_aperio_region_thumbnail_and_pixel_size() -> None:
    path = real_slide("cmu-1-small-region.svs")
    with open_slide(path) as slide:
        info = slide.info
        assert (info.width, info.height) == (2220, 2967)
        assert info.level_dimensions == ((2220, 2967),)
        assert info.pixel_size_um == 0.499
        assert (info.reader, info.vendor, info.offset) == ("openslide", "aperio", (0, 0))
        assert resolve_pixel_size(info, None) == 0.499
        region = slide.read_region(100, 200, 0, 64, 32)
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        with openslide.OpenSlide(path) as direct:
            expected = np.asarray(direct.read_region((100, 200), 0, (64, 32)))[:, :, :3]
        np.testing.assert_array_equal(region, expected)
        corner = slide.read_region(2200, 2960, 0, 40, 20)  # past the right and bottom edges
        assert (corner[:, 20:] == 255).all() and (corner[7:] == 255).all()
        assert not (corner[:7, :20] == 255).all()
        thumb, downsample = slide.thumbnail(500)
    assert thumb.shape == (500, 374, 3) and thumb.dtype == np.uint8
    assert downsample == pytest.approx(2967 / 500)


def test_real_slide_without_pixel_size_needs_the_flag() -> None:
    path = real_slide("tcga-cr-7395-01a-01-ts1.svs")
    with open_slide(path) as slide:
        info = slide.info
        assert info.level_dimensions == ((4443, 3567), (2221, 1783))
        assert info.pixel_size_um is None
        # 2.0005 is the 2x level: within LEVEL_TOLERANCE it is not "coarser than asked"
        assert slide.best_level_for_downsample(2.0) == 1
        assert slide.best_level_for_downsample(1.9) == 0
        thumb, _ = slide.thumbnail(256)
        assert max(thumb.shape[:2]) <= 256
    with pytest.raises(CellDataError, match=r"tcga-cr-7395-01a-01-ts1\.svs.*--pixel-size"):
        resolve_pixel_size(info, None)
    assert resolve_pixel_size(info, 0.25) == 0.25


def test_real_implausible_pixel_size_is_refused_by_value() -> None:
    path = real_slide("boxes.tiff")
    with open_slide(path) as slide:
        info = slide.info
        assert info.level_count == 4 and info.reader == "openslide"
        assert slide.best_level_for_downsample(4.0) == 2
        assert slide.best_level_for_downsample(3.9) == 1
    with pytest.raises(CellDataError, match=r"boxes\.tiff.*352\.8 µm/px.*--pixel-size"):
        resolve_pixel_size(info, None)
    assert resolve_pixel_size(info, 0.5) == 0.5


@pytest.mark.parametrize("name", ["small.svs", "boxes_0.dcm"])
def test_real_small_slides_open(name: str) -> None:
    with open_slide(real_slide(name)) as slide:
        assert (slide.info.width, slide.info.height) == (16, 16)
        assert slide.info.pixel_size_um == 0.499
        assert slide.read_region(0, 0, 0, 16, 16).shape == (16, 16, 3)
    if name.endswith(".dcm"):
        assert slide.info.vendor == "dicom"


@pytest.mark.parametrize("name", ["unreadable.svs", "unopenable.tiff", "broken.svs"])
def test_real_corrupt_slides_name_the_file(name: str) -> None:
    path = real_slide(name)
    with pytest.raises(CellDataError, match=rf"{path.name}: "):
        with open_slide(path) as slide:
            slide.read_region(0, 0, 0, 16, 16)


# --- files that cannot be read ------------------------------------------------------------------


def test_unreadable_files_raise_cell_data_error(tmp_path: Path) -> None:
    with pytest.raises(CellDataError, match="missing.svs: file not found"):
        open_slide(tmp_path / "missing.svs")
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"not a png at all")
    with pytest.raises(CellDataError, match="fake.png: unreadable image"):
        open_slide(fake_png)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(CellDataError, match="notes.txt: OpenSlide does not recognise"):
        open_slide(notes)


# --- OpenSlide bounds, pixel-size rules, file names ---------------------------------------------


class _BoundedSlide:
    """Stands in for ``openslide.OpenSlide`` on a slide with bounds (MIRAX, Hamamatsu VMS...)."""

    level_downsamples = (1.0, 4.0)
    level_dimensions = ((1000, 800), (250, 200))
    properties = {
        "openslide.bounds-x": "100",
        "openslide.bounds-y": "40",
        "openslide.bounds-width": "601",
        "openslide.bounds-height": "400",
        "openslide.mpp-x": "0.25",
        "openslide.mpp-y": "0.26",
        "openslide.vendor": "mirax",
    }
    calls: list = []

    def __init__(self, path: Path) -> None:
        pass

    def read_region(self, location: tuple, level: int, size: tuple) -> Image.Image:
        self.calls.append((location, level, size))
        return Image.new("RGBA", size, (10, 20, 30, 0))

    def close(self) -> None:
        pass


def test_openslide_bounds_give_offset_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openslide, "OpenSlide", _BoundedSlide)
    reader = OpenSlideReader(Path("bounded.mrxs"))
    info = reader.info
    assert info.offset == (100, 40) and (info.width, info.height) == (601, 400)
    assert info.level_dimensions == ((601, 400), (151, 100))
    assert (info.pixel_size_um, info.pixel_size_y_um, info.vendor) == (0.25, 0.26, "mirax")
    region = reader.read_region(5, 7, 1, 3, 2)
    assert _BoundedSlide.calls[-1] == ((105, 47), 1, (3, 2))
    assert (region == 255).all() and region.shape == (2, 3, 3)  # transparent -> white


def _info(pixel_size_um: float | None, pixel_size_y_um: float | None = None) -> SlideInfo:
    return SlideInfo(
        path=Path("scan.svs"),
        width=10,
        height=10,
        level_dimensions=((10, 10),),
        level_downsamples=(1.0,),
        pixel_size_um=pixel_size_um,
        offset=(0, 0),
        reader="openslide",
        pixel_size_y_um=pixel_size_y_um,
    )


def test_resolve_pixel_size_rules() -> None:
    assert resolve_pixel_size(_info(0.5), None) == 0.5
    assert resolve_pixel_size(_info(0.5), 0.25) == 0.25
    assert resolve_pixel_size(_info(0.25, 0.26), None) == 0.25  # 4% apart: square enough
    with pytest.raises(CellDataError, match=r"scan\.svs: --pixel-size 250 µm/px is outside"):
        resolve_pixel_size(_info(0.5), 250)
    with pytest.raises(CellDataError, match=r"scan\.svs: --pixel-size nan"):
        resolve_pixel_size(_info(None), float("nan"))
    with pytest.raises(CellDataError, match=r"scan\.svs: .*0\.05 µm/px.*--pixel-size"):
        resolve_pixel_size(_info(0.05), None)
    with pytest.raises(CellDataError, match=r"not square \(0\.25 µm along x, 0\.5 µm along y\)"):
        resolve_pixel_size(_info(0.25, 0.5), None)
    assert resolve_pixel_size(_info(0.25, 0.5), 0.25) == 0.25


def test_is_slide_file_by_suffix() -> None:
    for name in ("a.svs", "B.NDPI", "c.mrxs", "d.ome.tif", "e.ome.tiff", "f.dcm", "g.tiff"):
        assert is_slide_file(name), name
    for name in ("a.png", "b.jpg", "c.txt", "svs"):
        assert not is_slide_file(name), name
