"""The pixel size a TIFF declares: OME-XML first, then ImageJ, then centimetre resolution tags;
inches, other files and broken files give None, never an error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg_d2.data.importers.metadata import pixel_size_of
from cellseg_d2.data.io import write_tiff

PIXELS = np.zeros((16, 16), np.uint8)


def _ome(pixels_attrs: str, second: str = "") -> str:
    """A minimal OME-XML header whose (first) Pixels element has ``pixels_attrs``."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" '
        f'SizeX="16" SizeY="16" SizeC="1" SizeZ="1" SizeT="1" {pixels_attrs}>'
        "<TiffData/></Pixels></Image>"
        f"{second}</OME>"
    )


def _write_ome(path: Path, xml: str) -> Path:
    # UTF-8 bytes: a TIFF string tag must be ASCII, and OME units include "µm".
    tifffile.imwrite(path, PIXELS, description=xml.encode("utf-8"), metadata=None)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome  # the fixture really is what the reader looks for
    return path


def test_pixel_size_from_tiff_metadata(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "ome.ome.tif", pixels, metadata={"PhysicalSizeX": 0.5})
    tifffile.imwrite(
        tmp_path / "nm.ome.tif",
        pixels,
        metadata={"PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"},
    )
    tifffile.imwrite(
        tmp_path / "ij.tif", pixels, imagej=True, resolution=(4, 4), metadata={"unit": "micron"}
    )
    tifffile.imwrite(
        tmp_path / "cm.tif", pixels, resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    tifffile.imwrite(tmp_path / "inch.tif", pixels, resolution=(72, 72), resolutionunit="INCH")
    write_tiff(tmp_path / "plain.tif", pixels)
    assert pixel_size_of(tmp_path / "ome.ome.tif") == pytest.approx(0.5)
    assert pixel_size_of(tmp_path / "nm.ome.tif") == pytest.approx(0.25)
    assert pixel_size_of(tmp_path / "ij.tif") == pytest.approx(0.25)
    assert pixel_size_of(tmp_path / "cm.tif") == pytest.approx(0.5)
    assert pixel_size_of(tmp_path / "inch.tif") is None
    assert pixel_size_of(tmp_path / "plain.tif") is None


@pytest.mark.parametrize(
    "attrs, expected",
    [
        ('PhysicalSizeX="0.25"', 0.25),  # micrometres by default
        ('PhysicalSizeX="0.0005" PhysicalSizeXUnit="mm"', 0.5),
        ('PhysicalSizeX="125" PhysicalSizeXUnit="nm"', 0.125),
        ('PhysicalSizeXUnit="\u00b5m" PhysicalSizeX="0.75"', 0.75),  # attribute order is free
        ('PhysicalSizeX="2" PhysicalSizeXUnit="parsec"', None),  # unknown unit
        ('PhysicalSizeX="abc"', None),
        ('PhysicalSizeX="-0.5"', None),
        ('PhysicalSizeX="0"', None),
        ('PhysicalSizeY="0.5"', None),  # only X counts
    ],
)
def test_ome_physical_size_and_its_unit(tmp_path: Path, attrs: str, expected: float | None) -> None:
    path = _write_ome(tmp_path / "a.ome.tif", _ome(attrs))
    assert pixel_size_of(path) == (None if expected is None else pytest.approx(expected))


def test_only_the_first_pixels_element_counts(tmp_path: Path) -> None:
    second = '<Image ID="Image:1"><Pixels ID="Pixels:1" PhysicalSizeX="9"></Pixels></Image>'
    path = _write_ome(tmp_path / "two.ome.tif", _ome('PhysicalSizeX="0.3"', second))
    assert pixel_size_of(path) == pytest.approx(0.3)


def test_ome_without_a_size_falls_back_to_the_resolution_tags(tmp_path: Path) -> None:
    path = tmp_path / "fallback.ome.tif"
    tifffile.imwrite(
        path,
        PIXELS,
        description=_ome(""),
        metadata=None,
        resolution=(1e4, 1e4),
        resolutionunit="CENTIMETER",
    )
    assert pixel_size_of(path) == pytest.approx(1.0)


def test_imagej_um_unit(tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, PIXELS, imagej=True, resolution=(2, 2), metadata={"unit": "um"})
    assert pixel_size_of(path) == pytest.approx(0.5)


def test_other_files_and_broken_files_give_none(tmp_path: Path) -> None:
    # a real TIFF under another suffix is not opened at all
    renamed = tmp_path / "image.png"
    tifffile.imwrite(renamed, PIXELS, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    assert pixel_size_of(renamed) is None
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    assert pixel_size_of(broken) is None
    assert pixel_size_of(tmp_path / "missing.tif") is None


def test_upper_case_suffix_is_read(tmp_path: Path) -> None:
    path = tmp_path / "SCAN.TIFF"
    tifffile.imwrite(path, PIXELS, resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    assert pixel_size_of(path) == pytest.approx(0.25)
