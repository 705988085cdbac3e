"""TIFF header checks (cellseg_d2.data.tiff_header): bytes, samples and depth, before decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg_d2.data.io import MAX_PIXELS_ENV, read_image, read_image_size, read_instance_mask
from cellseg_d2.data.tiff_header import MAX_BYTES_PER_PIXEL, decoded_bytes, tiff_header_problem
from cellseg_d2.errors import CellDataError


def _samples(path: Path, samples: int, dtype: type = np.uint8) -> Path:
    """An 8 x 8 TIFF with ``samples`` samples per pixel (extra samples beyond the first)."""
    data = np.zeros((8, 8, samples), dtype)
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="contig", metadata=None)
    return path


def _volume(path: Path, depth: int) -> Path:
    """A 16 x 16 TIFF of image depth ``depth`` (the SGI volume tag, written as one tile)."""
    data = np.zeros((depth, 16, 16), np.uint8)
    tifffile.imwrite(path, data, volumetric=True, tile=(depth, 16, 16), metadata=None)
    return path


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decoding fail the test: the refusals must come from the header."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", refuse)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", refuse)


@pytest.mark.usefixtures("no_decoding")
def test_many_samples_and_depth_exceed_a_lowered_cap_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 8 x 8 and 16 x 16 px pass a 300-pixel cap, but 512 samples (32 KB) and depth 256 (64 KB)
    # do not pass its 2400-byte cap.
    monkeypatch.setenv(MAX_PIXELS_ENV, "300")
    wide, deep = _samples(tmp_path / "wide.tif", 512), _volume(tmp_path / "deep.tif", 256)
    for path, size, what in ((wide, 32768, "512 sample(s)"), (deep, 65536, "depth 256")):
        for reader in (read_image, read_image_size, read_instance_mask):
            with pytest.raises(CellDataError) as error:
                reader(path)
            message = str(error.value)
            assert message.startswith(f"{path}: decodes to {size} bytes"), message
            assert what in message and "2400 bytes allowed" in message
            assert MAX_PIXELS_ENV in message


@pytest.mark.usefixtures("no_decoding")
def test_samples_and_depth_are_refused_under_the_default_cap(tmp_path: Path) -> None:
    wide, deep = _samples(tmp_path / "wide.tif", 512), _volume(tmp_path / "deep.tif", 256)
    with pytest.raises(CellDataError, match=r"wide\.tif: 512 samples per pixel; an image"):
        read_image(wide)
    with pytest.raises(CellDataError, match=r"wide\.tif: 512 samples per pixel; a mask \(2-D\)"):
        read_instance_mask(wide)
    with pytest.raises(CellDataError, match=r"deep\.tif: a volume \(image depth 256\)"):
        read_image_size(deep)
    five = _samples(tmp_path / "five.tif", 5)
    with pytest.raises(CellDataError, match="5 samples per pixel"):
        read_image(five)
    rgb = _samples(tmp_path / "rgb.tif", 3)
    with pytest.raises(CellDataError, match=r"3 samples per pixel; a mask \(2-D\) has 1"):
        read_instance_mask(rgb)


def test_wide_samples_are_counted_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RGBA float64 is 32 bytes per pixel: a cap of 256 px (2 KB) admits 64 px, not 256."""
    path = tmp_path / "rgba64.tif"
    data = np.zeros((16, 16, 4), np.float64)
    tifffile.imwrite(path, data, photometric="rgb", extrasamples=("unassalpha",), metadata=None)
    monkeypatch.setenv(MAX_PIXELS_ENV, "256")
    with pytest.raises(CellDataError, match=r"rgba64\.tif: decodes to 8192 bytes"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1024")  # 8 KB: now it is read
    assert read_image(path).shape == (16, 16, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # no limit at all
    assert read_image(path).shape == (16, 16, 3)


@pytest.mark.parametrize(
    "data, kwargs",
    [
        (np.zeros((9, 7), np.uint8), {}),
        (np.zeros((9, 7), np.float64), {}),
        (np.zeros((9, 7, 3), np.uint16), {"photometric": "rgb"}),
        (np.zeros((3, 9, 7), np.uint8), {"photometric": "rgb", "planarconfig": "separate"}),
        (np.zeros((9, 7), bool), {}),
    ],
)
def test_decoded_bytes_match_the_decoded_array(tmp_path: Path, data: np.ndarray, kwargs) -> None:
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, data, metadata=None, **kwargs)
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert decoded_bytes(pages) == tif.pages.first.asarray().nbytes
        assert tiff_header_problem(tif, True, data.size, MAX_PIXELS_ENV) is None
        assert tiff_header_problem(tif, True, 0, MAX_PIXELS_ENV) is None


def test_byte_cap_follows_the_pixel_cap(tmp_path: Path) -> None:
    """A file just inside the byte cap passes, one byte-per-pixel step over it does not."""
    path = tmp_path / "f64.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.float64), metadata=None)  # 16 px, 128 bytes
    with tifffile.TiffFile(path) as tif:
        assert tiff_header_problem(tif, False, 16, "ENV") is None
        assert MAX_BYTES_PER_PIXEL == 8
    path = tmp_path / "c128.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.complex128), metadata=None)  # 16 bytes per px
    with tifffile.TiffFile(path) as tif:
        problem = tiff_header_problem(tif, False, 16, "ENV")
    assert problem is not None and problem.startswith("decodes to 256 bytes")
