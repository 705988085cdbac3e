"""Stain (HED) and colour jitter: the field's arithmetic, range, image-only, seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
from detectron2.data import transforms as T
from skimage.color import hed2rgb, rgb2hed

from cellseg_d2.config import get_cellseg_cfg
from cellseg_d2.data.stain import (
    HedJitterTransform,
    RandomHedJitter,
    build_color_augmentations,
    hed_jitter,
    shift_hue,
)
from cellseg_d2.errors import ConfigError

_LN_FLOOR = -np.log(1e-6)  # scikit-image's rgb2hed divides optical densities by this


def _he_like(seed: int = 0, size: int = 48) -> np.ndarray:
    """An RGB uint8 image mixed from positive H, E and DAB concentrations (inside the HED
    cone, where scikit-image's rgb2hed clips nothing)."""
    rng = np.random.default_rng(seed)
    hed = rng.uniform(0.02, 0.08, (size, size, 3))  # scikit-image units
    return np.rint(hed2rgb(hed) * 255).astype(np.uint8)


def _cfg(**opts: object):
    cfg = get_cellseg_cfg()
    cfg.merge_from_list([item for pair in opts.items() for item in pair])
    return cfg


def test_identity_draw_gives_the_same_image_in_both_channel_orders() -> None:
    image = np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    for fmt in ("RGB", "BGR"):
        assert np.array_equal(hed_jitter(image, np.ones(3), np.zeros(3), fmt), image)


def test_matches_scikit_image_rgb2hed_hed2rgb() -> None:
    """Tellez et al.'s recipe written with scikit-image: alpha * rgb2hed + beta, hed2rgb."""
    image = _he_like()
    alpha, beta = np.array([1.1, 0.9, 1.0]), np.array([0.05, -0.03, 0.0])  # natural-log OD
    stains = rgb2hed(image.astype(np.float64) / 255.0)
    assert stains.min() > 0  # nothing clipped: the reference is exact
    reference = np.rint(np.clip(hed2rgb(stains * alpha + beta / _LN_FLOOR), 0, 1) * 255)
    ours = hed_jitter(image, alpha, beta, "RGB")
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


def test_bgr_is_the_rgb_jitter_with_channels_reversed() -> None:
    image = _he_like(2)
    alpha, beta = np.array([0.95, 1.05, 1.02]), np.array([0.02, 0.04, -0.01])
    rgb = hed_jitter(image, alpha, beta, "RGB")
    bgr = hed_jitter(np.ascontiguousarray(image[:, :, ::-1]), alpha, beta, "BGR")
    assert np.abs(bgr[:, :, ::-1].astype(int) - rgb.astype(int)).max() <= 1  # float32 order


def test_more_haematoxylin_darkens_and_blues() -> None:
    """H absorbs red most: more of it lowers red more than blue."""
    image = _he_like(3)
    out = hed_jitter(image, np.array([1.0, 1.0, 1.0]), np.array([0.3, 0.0, 0.0]), "RGB")
    drop = image.astype(float).mean(axis=(0, 1)) - out.astype(float).mean(axis=(0, 1))
    assert (drop > 0).all() and drop[0] > drop[2]


def test_extreme_draws_stay_uint8_in_range() -> None:
    image = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for alpha, beta in [(np.full(3, 3.0), np.full(3, 2.0)), (np.zeros(3), np.full(3, -2.0))]:
        out = hed_jitter(image, alpha, beta, "BGR")
        assert out.dtype == np.uint8 and out.shape == image.shape


def test_hue_shift_zero_is_identity_and_full_turn_wraps() -> None:
    image = _he_like(5)
    assert shift_hue(image, 0.0) is image
    assert shift_hue(image, 1.0, "BGR") is image  # 180 OpenCV steps: a full turn
    shifted = shift_hue(image, 0.25, "RGB")
    assert shifted.dtype == np.uint8 and not np.array_equal(shifted, image)


def test_transforms_leave_coordinates_and_masks_alone() -> None:
    tfm = HedJitterTransform(np.array([1.2, 0.8, 1.0]), np.array([0.1, 0.0, 0.0]), "BGR")
    coords = np.array([[1.0, 2.0], [3.0, 4.0]])
    mask = np.random.default_rng(6).integers(0, 2, (16, 16)).astype(np.uint8)
    assert np.array_equal(tfm.apply_coords(coords.copy()), coords)
    assert np.array_equal(tfm.apply_segmentation(mask.copy()), mask)


def _augment(augs: list[T.Augmentation], image: np.ndarray, seed: int) -> np.ndarray:
    np.random.seed(seed)
    aug_input = T.AugInput(image.copy())
    T.AugmentationList(augs)(aug_input)
    return aug_input.image


def _all_on(**extra: object):
    return _cfg(
        **{
            "INPUT.STAIN.ENABLED": True,
            "INPUT.STAIN.PROB": 1.0,
            "INPUT.COLOR.ENABLED": True,
            "INPUT.COLOR.PROB": 1.0,
            **extra,
        }
    )


def test_built_augmentations_are_seeded_and_in_range() -> None:
    augs = build_color_augmentations(_all_on())
    image = _he_like(7, 64)[:, :, ::-1].copy()  # BGR, the default INPUT.FORMAT
    first, again = _augment(augs, image, 0), _augment(augs, image, 0)
    other = _augment(augs, image, 1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, image)
    for out in (first, other):
        assert out.dtype == np.uint8 and out.shape == image.shape


def test_hed_draws_stay_in_their_ranges() -> None:
    aug = RandomHedJitter(sigma=0.1, bias=0.02, image_format="RGB")
    np.random.seed(0)
    for _ in range(50):
        tfm = aug.get_transform(np.zeros((2, 2, 3), np.uint8))
        assert np.all(np.abs(tfm.alpha - 1) <= 0.1) and np.all(np.abs(tfm.beta) <= 0.02)


def test_defaults_add_nothing_and_bad_values_name_the_key() -> None:
    assert build_color_augmentations(_cfg()) == []
    with pytest.raises(ConfigError, match="INPUT.COLOR.HUE"):
        build_color_augmentations(_all_on(**{"INPUT.COLOR.HUE": 0.7}))
    with pytest.raises(ConfigError, match="INPUT.STAIN.PROB"):
        build_color_augmentations(_all_on(**{"INPUT.STAIN.PROB": 1.5}))
    with pytest.raises(ValueError, match="image format"):
        RandomHedJitter(0.1, 0.1, image_format="YUV")
