"""The quarter-turn rotation and the numpy vertical flip: exact pixels, coordinates, inverses,
and no read-only array handed on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from detectron2.data import transforms as T

from cellseg_d2.config import get_cellseg_cfg
from cellseg_d2.data.transforms import (
    NumpyVFlipTransform,
    RandomRotation90,
    RandomVFlip,
    ResizeByFactor,
    Rot90Transform,
    build_resize,
)


def test_rot90_transform_is_consistent() -> None:
    image = np.arange(6 * 4).reshape(6, 4).astype(np.uint8)
    for k in range(4):
        tfm = Rot90Transform(6, 4, k)
        rotated = tfm.apply_image(image)
        assert np.array_equal(rotated, np.rot90(image, k))
        # The pixel centre of value v moves where the coordinates say it does.
        y, x = 1, 2
        ((nx, ny),) = tfm.apply_coords(np.array([[x + 0.5, y + 0.5]]))
        assert rotated[int(ny), int(nx)] == image[y, x]
        assert np.array_equal(tfm.inverse().apply_image(rotated), image)
        assert isinstance(tfm.inverse(), T.Transform)


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 3), (2, 6, 4, 3)])
def test_vertical_flip_reads_read_only_arrays_as_fvcore_flips(shape: tuple[int, ...]) -> None:
    image = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    expected = T.VFlipTransform(6).apply_image(image.copy())
    image.flags.writeable = False  # what detectron2's resize returns (np.asarray of a PIL image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flipped = NumpyVFlipTransform(6).apply_image(image)
    assert np.array_equal(flipped, expected)
    assert flipped.flags.writeable and flipped.flags.c_contiguous
    assert isinstance(NumpyVFlipTransform(6), T.VFlipTransform)  # crops follow it (mapper)
    assert isinstance(RandomVFlip(prob=1.0).get_transform(image), NumpyVFlipTransform)


def test_random_rotation_draws_all_three_turns_and_none_at_prob_0() -> None:
    image = np.zeros((6, 4), np.uint8)
    np.random.seed(0)
    turns = {RandomRotation90(prob=1.0).get_transform(image).k for _ in range(60)}
    assert turns == {1, 2, 3}
    assert isinstance(RandomRotation90(prob=0.0).get_transform(image), T.NoOpTransform)


def test_resize_by_factor_rounds_each_side_and_jitters_around_it() -> None:
    image = np.zeros((40, 50, 3), np.uint8)
    tfm = ResizeByFactor(1.5).get_transform(image)
    assert isinstance(tfm, T.ResizeTransform) and (tfm.new_h, tfm.new_w) == (60, 75)
    assert tfm.apply_image(image).shape == (60, 75, 3)
    assert isinstance(ResizeByFactor(1.0).get_transform(image), T.NoOpTransform)
    np.random.seed(0)
    sides = {ResizeByFactor(2.0, jitter=0.25).get_transform(image).new_h for _ in range(10)}
    assert len(sides) > 1 and all(60 <= h <= 100 for h in sides)
    with pytest.raises(ValueError):
        ResizeByFactor(0.0)


def test_build_resize_follows_input_scale() -> None:
    cfg = get_cellseg_cfg()
    assert isinstance(build_resize(cfg, is_train=False), T.ResizeShortestEdge)
    cfg.INPUT.SCALE, cfg.INPUT.SCALE_JITTER = 0.5, 0.1
    train, test = build_resize(cfg, is_train=True), build_resize(cfg, is_train=False)
    assert (train.factor, train.jitter, test.factor, test.jitter) == (0.5, 0.1, 0.5, 0.0)
