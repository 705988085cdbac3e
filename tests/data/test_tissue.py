"""Tissue detection on thumbnails drawn in numpy, user masks, and tissue areas."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hsv

from cellseg_d2.data.tissue import (
    hsv_saturation,
    load_mask_image,
    tissue_area_mm2,
    tissue_mask,
)
from cellseg_d2.errors import CellDataError

PINK = (230, 150, 200)  # eosin-like: saturation ~0.35
GLASS = (245, 244, 246)


def thumbnail_with_blob_and_speck() -> tuple[np.ndarray, np.ndarray]:
    """A 200x300 glass thumbnail with JPEG-like noise, a pink disc with a pale hole, a 6x6
    pink speck; returns the image and the disc (hole filled) as the expected mask."""
    rng = np.random.default_rng(0)
    image = np.empty((200, 300, 3), np.uint8)
    image[:] = GLASS
    image = np.clip(image + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:200, 0:300]
    disc = (yy - 100) ** 2 + (xx - 120) ** 2 <= 60**2
    image[disc] = PINK
    image[(yy - 100) ** 2 + (xx - 120) ** 2 <= 8**2] = GLASS  # a lumen: filled as tissue
    image[20:26, 260:266] = PINK  # 36 px < 1e-3 of 60000
    return image, disc


def test_tissue_mask_keeps_the_blob_and_drops_the_speck() -> None:
    image, disc = thumbnail_with_blob_and_speck()
    mask = tissue_mask(image, min_area_fraction=1e-3)
    assert mask.shape == (200, 300) and mask.dtype == bool
    assert not mask[15:31, 255:271].any()
    assert mask[100, 120]  # the lumen is filled
    disagree = np.count_nonzero(mask != disc)
    assert disagree <= 0.02 * np.count_nonzero(disc)  # only along the rim of the disc
    # with the default (1e-4 = 6 px) the speck is large enough to stay
    assert tissue_mask(image)[23, 263]


@pytest.mark.parametrize("value", [255, 240, 0])
def test_uniform_thumbnails_have_no_tissue(value: int) -> None:
    assert not tissue_mask(np.full((64, 80, 3), value, np.uint8)).any()


def test_glass_noise_alone_is_not_tissue() -> None:
    rng = np.random.default_rng(1)
    noisy = np.clip(240 + rng.integers(-8, 9, (120, 160, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(noisy).any()


def test_tissue_mask_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        tissue_mask(np.zeros((10, 10), np.uint8))


def test_load_mask_image_resizes_nearest(tmp_path: Path) -> None:
    small = np.zeros((4, 6), np.uint8)
    small[1:3, 2:5] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(small).save(path)
    mask = load_mask_image(path, (8, 12))
    expected = np.zeros((8, 12), bool)
    expected[2:6, 4:10] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(load_mask_image(path, (4, 6)), small > 0)
    rgb = tmp_path / "mask.tif"
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 1] = (0, 0, 9)
    tifffile.imwrite(rgb, colour, photometric="rgb")
    assert load_mask_image(rgb, (2, 2)).tolist() == [[False, True], [False, False]]


def test_load_mask_image_names_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CellDataError, match="absent.png: tissue mask file not found"):
        load_mask_image(tmp_path / "absent.png", (4, 4))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(CellDataError, match="bad.png: unreadable image"):
        load_mask_image(bad, (4, 4))


def test_tissue_area_mm2_arithmetic() -> None:
    mask = np.zeros((20, 20), bool)
    mask[:10, :10] = True  # 100 mask pixels of (4 * 0.5 µm)^2 = 4 µm² each
    assert tissue_area_mm2(mask, 4.0, 0.5) == 400 / 1e6
    assert tissue_area_mm2(np.ones((1000, 1000), bool), 1.0, 1.0) == 1.0
    assert tissue_area_mm2(np.zeros((5, 5), bool), 8.0, 0.25) == 0.0


def test_saturation_equals_skimage() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    image[0, :3] = [(0, 0, 0), (255, 255, 255), (204, 102, 153)]  # black, white, a .5 case
    image[1] = image[1, :, :1]  # greys
    expected = np.rint(rgb2hsv(image)[:, :, 1] * 255).astype(np.uint8)
    np.testing.assert_array_equal(hsv_saturation(image), expected)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (6, 2), (37, 23)])
def test_the_median_blur_equals_scipys_nearest_median(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    expected = ndimage.median_filter(image, size=5, mode="nearest")
    np.testing.assert_array_equal(cv2.medianBlur(image, 5), expected)
