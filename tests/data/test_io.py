"""Readers and writers of cellseg_d2.data.io: pixel formats, channel order, mask checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellseg_d2.data.io import (
    MAX_PIXELS_ENV,
    image_size,
    read_any_image,
    read_image,
    read_image_size,
    read_instance_mask,
    write_tiff,
)
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import atomic_write


def _tif(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Write a TIFF with tifffile directly, for layouts io.write_tiff does not produce."""
    tifffile.imwrite(path, array, metadata=None, **kwargs)
    return path


def _rgb_planes(height: int = 5, width: int = 7) -> np.ndarray:
    """An RGB image whose three channels hold different constants: R=10, G=20, B=30."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    return rgb


def test_rgba_lzw_is_read_as_bgr_without_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb_planes(), np.full((5, 7, 1), 255, np.uint8)], axis=2)
    path = _tif(
        tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=("unassalpha",), compression="lzw"
    )
    image = read_image(path)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert (image[..., 0] == 30).all() and (image[..., 1] == 20).all()  # B, G
    assert (image[..., 2] == 10).all()  # R last: BGR
    assert image.flags["C_CONTIGUOUS"]


def test_rgb_and_channel_first_are_bgr(tmp_path: Path) -> None:
    rgb = _rgb_planes()
    assert (read_image(_tif(tmp_path / "rgb.tif", rgb, photometric="rgb")) == rgb[..., ::-1]).all()
    planar = np.moveaxis(rgb, -1, 0)  # stored as 3xHxW
    path = _tif(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    assert (read_image(path) == rgb[..., ::-1]).all()


def test_varying_alpha_is_rejected(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0, 3] = 7
    path = _tif(tmp_path / "alpha.tif", rgba, photometric="rgb", extrasamples=("unassalpha",))
    with pytest.raises(CellDataError, match="alpha.tif"):
        read_image(path)


def test_grayscale_is_repeated_to_three_channels(tmp_path: Path) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    image = read_image(_tif(tmp_path / "gray.tif", gray))
    assert image.shape == (4, 5, 3)
    assert all((image[..., c] == gray).all() for c in range(3))


def test_16bit_is_scaled_by_dtype_range(tmp_path: Path) -> None:
    data = np.array([[0, 257, 32896, 65535]], np.uint16)
    image = read_image(_tif(tmp_path / "u16.tif", data))
    assert image.dtype == np.uint8
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16bit_holding_8bit_values_is_cast(tmp_path: Path) -> None:
    data = np.array([[0, 17, 255]], np.uint16)
    assert read_image(_tif(tmp_path / "u16small.tif", data))[0, :, 1].tolist() == [0, 17, 255]


def test_float_images(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert read_image(_tif(tmp_path / "unit.tif", unit))[0, :, 2].tolist() == [0, 128, 255]
    wide = np.array([[-1.0, 0.0, 3.0]], np.float64)  # min-max stretched
    assert read_image(_tif(tmp_path / "wide.tif", wide))[0, :, 0].tolist() == [0, 64, 255]


def test_unreadable_and_truncated_images_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CellDataError, match="missing.tif"):
        read_image(tmp_path / "missing.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(CellDataError, match="junk.tif"):
        read_image(junk)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = _tif(tmp_path / "cut.tif", noisy, photometric="rgb")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CellDataError, match="cut.tif"):
        read_image(path)


def test_float_mask_becomes_int_ids(tmp_path: Path) -> None:
    labels = np.array([[0, 3, 3], [7, 0, 1000]], np.float64)
    mask = read_instance_mask(_tif(tmp_path / "class1.tif", labels))
    assert mask.dtype == np.int64
    assert mask.tolist() == [[0, 3, 3], [7, 0, 1000]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_mask_dtypes(tmp_path: Path, dtype: type) -> None:
    labels = np.array([[0, 1], [2, 2]], dtype)
    assert read_instance_mask(_tif(tmp_path / "m.tif", labels)).tolist() == [[0, 1], [2, 2]]


@pytest.mark.parametrize(
    ("value", "problem"),
    [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative"), (2.5, "non-integer")],
)
def test_bad_mask_values_raise(tmp_path: Path, value: float, problem: str) -> None:
    labels = np.zeros((3, 3), np.float64)
    labels[1, 1] = value
    path = _tif(tmp_path / "class2.tif", labels)
    with pytest.raises(CellDataError, match=problem) as info:
        read_instance_mask(path)
    assert str(path) in str(info.value)


def test_negative_int_mask_and_3d_mask_raise(tmp_path: Path) -> None:
    with pytest.raises(CellDataError, match="negative"):
        read_instance_mask(_tif(tmp_path / "neg.tif", np.array([[0, -2]], np.int16)))
    with pytest.raises(CellDataError, match="2-D"):
        read_instance_mask(_tif(tmp_path / "rgb.tif", _rgb_planes(), photometric="rgb"))


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_tiff_round_trip(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb_planes(), np.full((5, 7, 1), 255, np.uint8)], axis=2)
    write_tiff(tmp_path / "w.tif", rgba, compression="lzw")
    assert (read_image(tmp_path / "w.tif") == _rgb_planes()[..., ::-1]).all()
    labels = np.array([[0, 5], [9, 9]], np.float64)
    write_tiff(tmp_path / "class1.tif", labels)
    assert read_instance_mask(tmp_path / "class1.tif").tolist() == [[0, 5], [9, 9]]


# ---- hostile or careless files (issue 12) ---------------------------------------------------


def _pages(path: Path, stack: np.ndarray) -> Path:
    """Write each 2-D plane of ``stack`` as its own TIFF page (an ImageJ-style stack)."""
    with tifffile.TiffWriter(path) as tif:
        for plane in stack:
            tif.write(plane, metadata=None)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == len(stack)
    return path


def test_multi_page_tiffs_follow_one_rule(tmp_path: Path) -> None:
    """3 or 4 same-size pages are the channels of an image; any other stack is refused."""
    planes = np.moveaxis(_rgb_planes(), -1, 0)  # 3 pages: R, G, B
    _pages(tmp_path / "rgb_pages.tif", planes)
    image = read_image(tmp_path / "rgb_pages.tif")
    assert (image[..., 0] == 30).all() and (image[..., 2] == 10).all()
    stack = _pages(tmp_path / "zstack.tif", np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(CellDataError, match=r"zstack\.tif: multi-page TIFF with 5 pages"):
        read_image(stack)
    with pytest.raises(CellDataError, match=r"zstack\.tif: multi-page TIFF with 5 pages"):
        read_image_size(stack)
    with pytest.raises(CellDataError, match=r"rgb_pages\.tif: multi-page TIFF with 3 pages"):
        read_instance_mask(tmp_path / "rgb_pages.tif")


def test_uint64_ids_above_int64_are_renumbered_not_wrapped(tmp_path: Path) -> None:
    labels = np.zeros((6, 8), np.uint64)
    labels[0:2] = 2**63 + 5
    labels[2:4] = 2**64 - 1
    labels[4, :4] = 7
    ids = read_instance_mask(_tif(tmp_path / "u64.tif", labels))
    assert ids.dtype == np.int64 and ids.min() == 0
    # Three instances, each still one distinct id, order kept, background still 0.
    assert [int(ids[0, 0]), int(ids[2, 0]), int(ids[4, 0])] == [2, 3, 1]
    assert (ids[labels == 0] == 0).all() and np.unique(ids).size == 4


def test_pixel_cap_is_checked_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.tif"
    write_tiff(path, np.zeros((40, 50, 3), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # pixels truncated: decoding would fail differently
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    for reader in (read_image, read_image_size):
        with pytest.raises(CellDataError) as info:
            reader(path)
        message = str(info.value)
        assert "big.tif" in message and "limit of 1000 pixels" in message
        assert MAX_PIXELS_ENV in message
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # no limit: now the truncation shows
    with pytest.raises(CellDataError, match="unreadable TIFF"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(CellDataError, match=MAX_PIXELS_ENV):
        read_image_size(path)


# ---- read_any_image and image_size (moved from the importers) ----


def _gradient(height: int, width: int) -> np.ndarray:
    return (np.arange(height * width) % 251).astype(np.uint8).reshape(height, width)


def test_read_any_image_keeps_pixels_of_png_and_tiff(tmp_path: Path) -> None:
    gray = _gradient(20, 24)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert np.array_equal(read_any_image(tmp_path / "g.png"), gray)
    rgb = np.stack([gray, gray[::-1], 255 - gray], axis=2)
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    assert np.array_equal(read_any_image(tmp_path / "c.bmp"), rgb)
    deep = (np.arange(20 * 24, dtype=np.uint16) * 100).reshape(20, 24)
    write_tiff(tmp_path / "d.TIF", deep)
    out = read_any_image(tmp_path / "d.TIF")
    assert out.dtype == np.uint16 and np.array_equal(out, deep)  # no rescaling


def test_read_any_image_converts_palette_and_gray_alpha(tmp_path: Path) -> None:
    palette = Image.fromarray(_gradient(20, 20)).convert("P")
    palette.save(tmp_path / "p.png")
    assert read_any_image(tmp_path / "p.png").shape == (20, 20, 3)
    alpha = Image.fromarray(np.full((20, 20), 7, np.uint8))
    Image.merge("LA", (Image.fromarray(_gradient(20, 20)), alpha)).save(tmp_path / "la.png")
    rgba = read_any_image(tmp_path / "la.png")
    assert rgba.shape == (20, 20, 4) and (rgba[..., 3] == 7).all()
    assert np.array_equal(rgba[..., 0], _gradient(20, 20))


def test_read_any_image_refuses_garbage_and_large_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(CellDataError, match=r"bad\.png: unreadable image"):
        read_any_image(tmp_path / "bad.png")
    Image.fromarray(_gradient(20, 24)).save(tmp_path / "big.png")
    monkeypatch.setenv("CELLSEG_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(CellDataError, match=r"big\.png: 20x24 px exceeds the limit of 100 pixels"):
        read_any_image(tmp_path / "big.png")


def test_image_size_from_the_header(tmp_path: Path) -> None:
    Image.fromarray(_gradient(21, 34)).save(tmp_path / "a.jpg")
    write_tiff(tmp_path / "b.tif", _gradient(17, 19))
    assert image_size(tmp_path / "a.jpg") == (21, 34)
    assert image_size(tmp_path / "b.tif") == (17, 19)
    with pytest.raises(CellDataError, match=r"missing\.png: file not found"):
        image_size(tmp_path / "missing.png")
    (tmp_path / "bad.jpeg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(CellDataError, match=r"bad\.jpeg: unreadable image"):
        image_size(tmp_path / "bad.jpeg")
