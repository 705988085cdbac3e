"""Slide reading: the real slides of ``../shared/data/slides`` (skipped when absent), synthetic
OME-TIFF pyramids and plain images written here, and the pixel-size rules."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from cellseg_d2.data import slide_base
from cellseg_d2.data.slide import (
    OpenSlideReader,
    SlideInfo,
    is_slide_file,
    open_slide,
    resolve_pixel_size,
)
from cellseg_d2.data.slide_base import rgba_on_white
from cellseg_d2.errors import CellDataError
from tests.conftest import SHARED_DATA

SLIDES = SHARED_DATA / "slides"


def real_slide(name: str) -> Path:
    """A real slide file of the shared data, or skip the test saying where it was looked for."""
    path = SLIDES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared slide files are not on this machine)")
    return path


def pattern(height: int, width: int) -> np.ndarray:
    """RGB uint8 whose every pixel differs from its neighbours: exact reads are checkable."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % 251, yy % 241, (7 * xx + 3 * yy) % 256], axis=2).astype(np.uint8)


def write_ome_pyramid(path: Path, base: np.ndarray, levels: int = 3) -> None:
    """An OME-TIFF pyramid as QuPath and bfconvert write it: levels 1.. in SubIFDs, tiled."""
    options = {"tile": (64, 64), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            base,
            subifds=levels - 1,
            metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm"},
            **options,
        )
        for level in range(1, levels):
            step = 2**level
            tif.write(base[::step, ::step], subfiletype=1, **options)


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


# --- synthetic pyramids and images --------------------------------------------------------------


def test_ome_pyramid_reads_exact_pixels_at_every_level(tmp_path: Path) -> None:
    base = pattern(200, 300)
    path = tmp_path / "pyramid.ome.tif"
    write_ome_pyramid(path, base)
    with open_slide(path) as slide:
        info = slide.info
        assert (info.reader, info.vendor) == ("tifffile", "ome-tiff")
        assert info.level_dimensions == ((300, 200), (150, 100), (75, 50))
        assert info.level_downsamples == (1.0, 2.0, 4.0)
        assert info.pixel_size_um == 0.25
        np.testing.assert_array_equal(slide.read_region(37, 61, 0, 100, 70), base[61:131, 37:137])
        np.testing.assert_array_equal(
            slide.read_region(20, 10, 1, 90, 80), base[10:170:2, 20:200:2]
        )
        np.testing.assert_array_equal(slide.read_region(8, 4, 2, 3, 2), base[4:12:4, 8:20:4])
        edge = slide.read_region(-2, 190, 0, 5, 20)  # left of and below the image: white
        assert (edge[:, :2] == 255).all() and (edge[10:] == 255).all()
        np.testing.assert_array_equal(edge[:10, 2:], base[190:200, 0:3])
        assert [slide.best_level_for_downsample(d) for d in (0.5, 1, 1.9, 2, 3.9, 4, 99)] == [
            0,
            0,
            0,
            1,
            1,
            2,
            2,
        ]
        thumb, downsample = slide.thumbnail(80)
    assert thumb.shape == (53, 80, 3) and downsample == 300 / 80
    with pytest.raises(ValueError, match="level 3"):
        slide.read_region(0, 0, 3, 1, 1)


def test_grey_subifd_pyramid_without_ome_goes_to_tifffile(tmp_path: Path) -> None:
    grey = pattern(40, 50)[:, :, 2]
    path = tmp_path / "grey.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(grey, tile=(16, 16), subifds=1, compression="zlib")
        tif.write(grey[::2, ::2], tile=(16, 16), subfiletype=1, compression="zlib")
    with open_slide(path) as slide:
        assert slide.info.reader == "tifffile" and slide.info.level_count == 2
        region = slide.read_region(10, 6, 1, 12, 9)
    np.testing.assert_array_equal(region, np.repeat(grey[6:24:2, 10:34:2, None], 3, axis=2))


def test_png_is_one_level_without_pixel_size(tmp_path: Path) -> None:
    rgb = pattern(30, 45)
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    assert not is_slide_file(path)
    with open_slide(path) as slide:
        assert (slide.info.reader, slide.info.level_count) == ("image", 1)
        assert slide.info.pixel_size_um is None
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 45, 30), rgb)
        np.testing.assert_array_equal(slide.read_region(40, 25, 0, 5, 5), rgb[25:30, 40:45])
        assert (slide.read_region(44, 0, 0, 3, 1)[0, 1:] == 255).all()


@pytest.mark.parametrize(
    ("resolution", "unit"), [(40000, "CENTIMETER"), (101600, "INCH")], ids=["cm", "inch"]
)
def test_plain_tiff_pixel_size_from_resolution_tags(
    tmp_path: Path, resolution: int, unit: str
) -> None:
    rgb = pattern(24, 32)
    strips = tmp_path / "strips.tif"  # OpenSlide reads only tiled TIFFs: the image reader
    tifffile.imwrite(
        strips, rgb, photometric="rgb", resolution=(resolution, resolution), resolutionunit=unit
    )
    tiled = tmp_path / "tiled.tif"  # OpenSlide's generic TIFF driver
    tifffile.imwrite(
        tiled,
        rgb,
        photometric="rgb",
        tile=(16, 16),
        compression="zlib",
        resolution=(resolution, resolution),
        resolutionunit=unit,
    )
    for path, reader in ((strips, "image"), (tiled, "openslide")):
        with open_slide(path) as slide:
            assert (slide.info.reader, slide.info.level_count) == (reader, 1)
            assert slide.info.pixel_size_um == pytest.approx(0.25)
            np.testing.assert_array_equal(slide.read_region(0, 0, 0, 32, 24), rgb)


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


def test_thumbnail_read_piecewise_matches_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb = pattern(48, 64)
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    expected = cv2.resize(rgb, (16, 12), interpolation=cv2.INTER_AREA)
    monkeypatch.setattr(slide_base, "_THUMBNAIL_READ", 16)  # 4x4 thumbnail pixels per read
    with open_slide(path) as slide:
        thumb, downsample = slide.thumbnail(16)
    np.testing.assert_array_equal(thumb, expected)
    assert downsample == 4.0


# --- OpenSlide bounds, pixel-size rules, helpers -------------------------------------------------


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


def test_rgba_on_white_exact() -> None:
    rgba = np.array([[[0, 0, 0, 0], [200, 100, 0, 255], [0, 0, 0, 128]]], np.uint8)
    assert rgba_on_white(rgba).tolist() == [[[255, 255, 255], [200, 100, 0], [127, 127, 127]]]


def test_jpeg_ome_tiles_match_tifffile_whole_read(tmp_path: Path) -> None:
    path = tmp_path / "jpeg.ome.tif"
    tifffile.imwrite(
        path,
        pattern(70, 90),
        ome=True,
        photometric="rgb",
        tile=(32, 32),
        compression="jpeg",
        metadata={"axes": "YXS"},
    )
    with open_slide(path) as slide:
        region = slide.read_region(10, 20, 0, 60, 40)
    np.testing.assert_array_equal(region, tifffile.imread(path)[20:60, 10:70])


@pytest.mark.parametrize(
    ("data", "axes", "problem"),
    [
        (np.zeros((32, 32, 3), np.uint16), "YXS", "uint16 pixels"),
        (np.zeros((2, 32, 32), np.uint8), "CYX", r"2 planes per level \(axes CYX\)"),
    ],
    ids=["16-bit", "channels"],
)
def test_pyramids_not_rgb_are_refused(
    tmp_path: Path, data: np.ndarray, axes: str, problem: str
) -> None:
    path = tmp_path / "fluorescence.ome.tif"
    photometric = "rgb" if axes == "YXS" else "minisblack"
    tifffile.imwrite(
        path, data, ome=True, photometric=photometric, tile=(16, 16), metadata={"axes": axes}
    )
    with pytest.raises(CellDataError, match=rf"fluorescence\.ome\.tif: {problem}; .*to RGB"):
        open_slide(path)
