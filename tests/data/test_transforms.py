"""The quarter-turn rotation and the numpy vertical flip: exact pixels, coordinates, inverses,
and no read-only array handed on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from detectron2.data import transforms as T

from cellseg_d2.data.transforms import (
    NumpyVFlipTransform,
    RandomRotation90,
    RandomVFlip,
    Rot90Transform,
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
