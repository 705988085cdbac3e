"""The tifffile side of slide reading (:mod:`cellseg_d2.data.slide_tiff`): OME-TIFF and SubIFD
pyramids read tile by tile, flat images read whole, the TIFF pixel-size and routing rules, and
the layouts refused by name. Files are synthetic, written here with tifffile and PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellseg_d2.data.io import MAX_PIXELS_ENV
from cellseg_d2.data.slide import open_slide
from cellseg_d2.data.slide_tiff import (
    ImageReader,
    TiffPyramidReader,
    is_tiff_name,
    needs_tifffile,
    open_tiff_or_image,
    tiff_pixel_size,
)
from cellseg_d2.errors import CellDataError
from tests.data.slide_helpers import pattern, write_ome_pyramid

# --- pyramids and images through open_slide ----------------------------------------------------


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


# --- the module's functions and readers, called directly ---------------------------------------


def _write_rgb(path: Path, rgb: np.ndarray, **options: object) -> Path:
    tifffile.imwrite(path, rgb, photometric="rgb", **options)
    return path


def test_tiff_pixel_size_rules(tmp_path: Path) -> None:
    rgb = pattern(8, 8)
    ome = tmp_path / "pyramid.ome.tif"
    write_ome_pyramid(ome, pattern(32, 32), levels=2)
    assert tiff_pixel_size(ome) == 0.25  # OME-XML PhysicalSizeX
    per_cm = _write_rgb(tmp_path / "cm.tif", rgb, resolution=(20000, 20000), resolutionunit=3)
    assert tiff_pixel_size(per_cm) == pytest.approx(0.5)
    # pixels per inch: this module's own rule; a 72 dpi default is returned as stated
    dpi = _write_rgb(tmp_path / "dpi.tif", rgb, resolution=(72, 72), resolutionunit="INCH")
    assert tiff_pixel_size(dpi) == pytest.approx(25400 / 72)
    unitless = _write_rgb(tmp_path / "unitless.tif", rgb, resolution=(4, 4), resolutionunit=1)
    assert tiff_pixel_size(unitless) is None
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00 not really a TIFF")
    assert tiff_pixel_size(garbage) is None
    png = tmp_path / "image.png"
    Image.fromarray(rgb).save(png)
    assert tiff_pixel_size(png) is None


def test_needs_tifffile_only_for_ome_or_subifd_levels(tmp_path: Path) -> None:
    rgb = pattern(32, 32)
    pyramid = tmp_path / "pyramid.ome.tif"
    write_ome_pyramid(pyramid, rgb, levels=2)
    flat_ome = tmp_path / "flat.ome.tif"
    tifffile.imwrite(flat_ome, rgb, ome=True, photometric="rgb", metadata={"axes": "YXS"})
    subifds = tmp_path / "subifds.tif"
    with tifffile.TiffWriter(subifds) as tif:
        tif.write(rgb, photometric="rgb", tile=(16, 16), subifds=1)
        tif.write(rgb[::2, ::2], photometric="rgb", tile=(16, 16), subfiletype=1)
    assert needs_tifffile(pyramid) and needs_tifffile(flat_ome) and needs_tifffile(subifds)
    tiled = _write_rgb(tmp_path / "tiled.tif", rgb, tile=(16, 16))
    strips = _write_rgb(tmp_path / "strips.tif", rgb)
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a TIFF")
    png = tmp_path / "image.png"
    Image.fromarray(rgb).save(png)
    for path in (tiled, strips, garbage, png, tmp_path / "missing.tif"):
        assert not needs_tifffile(path), path.name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.tif", True),
        ("b.TIFF", True),
        ("c.ome.tif", True),
        ("d.svs", False),
        ("e.png", False),
        ("tif", False),
        ("f.tif.png", False),
    ],
)
def test_is_tiff_name(name: str, expected: bool) -> None:
    assert is_tiff_name(name) is expected
    assert is_tiff_name(Path("folder") / name) is expected


def test_open_tiff_or_image_routes_by_tiles_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb = pattern(24, 32)
    strips = _write_rgb(tmp_path / "strips.tif", rgb, rowsperstrip=5)
    tiled = _write_rgb(tmp_path / "tiled.tif", rgb, tile=(16, 16))
    png = tmp_path / "image.png"
    Image.fromarray(rgb).save(png)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    expected = ((strips, ImageReader, "image"), (tiled, TiffPyramidReader, "tifffile"))
    for path, kind, reader in (*expected, (png, ImageReader, "image")):
        with open_tiff_or_image(path) as slide:
            assert type(slide) is kind and slide.info.reader == reader, path.name
            np.testing.assert_array_equal(slide.read_region(0, 0, 0, 32, 24), rgb)
    # a strip TIFF above the pixel cap is read in pieces; at the cap it is still read whole
    monkeypatch.setenv(MAX_PIXELS_ENV, str(24 * 32 - 1))
    with open_tiff_or_image(strips) as slide:
        assert type(slide) is TiffPyramidReader
        np.testing.assert_array_equal(slide.read_region(3, 4, 0, 20, 15), rgb[4:19, 3:23])
    monkeypatch.setenv(MAX_PIXELS_ENV, str(24 * 32))
    with open_tiff_or_image(strips) as slide:
        assert type(slide) is ImageReader
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a TIFF")
    with pytest.raises(CellDataError, match=r"garbage\.tif: unreadable TIFF"):
        open_tiff_or_image(garbage)


def test_image_reader_info(tmp_path: Path) -> None:
    rgb = pattern(24, 32)
    tiff = _write_rgb(tmp_path / "scan.TIF", rgb, resolution=(40000, 40000), resolutionunit=3)
    png = tmp_path / "image.png"
    Image.fromarray(rgb).save(png)
    with ImageReader(tiff) as slide:
        info = slide.info
    assert (info.width, info.height, info.level_dimensions) == (32, 24, ((32, 24),))
    assert (info.level_downsamples, info.offset, info.vendor) == ((1.0,), (0, 0), "tif")
    assert info.pixel_size_um == pytest.approx(0.25)
    with ImageReader(png) as slide:
        assert (slide.info.vendor, slide.info.pixel_size_um) == ("png", None)


def test_tiff_pyramid_reader_rgba_tiles_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[:, :, :3] = pattern(20, 30)
    rgba[:, :, 3] = 255
    rgba[0, 0, 3] = 0
    rgba[0, 1] = (100, 200, 0, 128)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(16, 16))
    with TiffPyramidReader(path) as slide:
        assert (slide.info.reader, slide.info.vendor) == ("tifffile", "tiff")
        region = slide.read_region(0, 0, 0, 30, 20)
    # alpha 128 over white: (v * 128 + 255 * 127 + 127) // 255
    assert region[0, :2].tolist() == [[255, 255, 255], [177, 227, 127]]
    np.testing.assert_array_equal(region[1:], rgba[1:, :, :3])
    np.testing.assert_array_equal(region[0, 2:], rgba[0, 2:, :3])


def test_tiff_pyramid_reader_closed_and_unreadable(tmp_path: Path) -> None:
    path = _write_rgb(tmp_path / "tiled.tif", pattern(16, 16), tile=(16, 16))
    slide = TiffPyramidReader(path)
    slide.close()
    slide.close()  # idempotent
    with pytest.raises(CellDataError, match=r"tiled\.tif: the slide is closed"):
        slide.read_region(0, 0, 0, 4, 4)
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00 not really a TIFF")
    with pytest.raises(CellDataError, match=r"garbage\.tif: unreadable TIFF"):
        TiffPyramidReader(garbage)
