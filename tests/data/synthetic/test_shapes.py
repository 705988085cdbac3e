"""Tests for the synthetic cell looks: outlines, clipping and class styles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cellseg_d2.data.synthetic.shapes import (
    CLASS_NAMES,
    Shape,
    base_class,
    class_style,
    clip_to_image,
    draw_shape,
)


@pytest.mark.parametrize("cls", [1, 2, 3, 4])
def test_every_class_draws_one_connected_cell_around_its_centre(cls: int) -> None:
    rng = np.random.default_rng(cls)
    for _ in range(20):
        shape = draw_shape(rng, cls, (50.3, 60.7))
        assert shape.mask.dtype == bool and shape.mask.shape == shape.detail.shape
        assert ndimage.label(shape.mask)[1] == 1, "a cell must be one component"
        rows, cols = np.nonzero(shape.mask)
        assert shape.top + rows.min() <= 50 <= shape.top + rows.max()
        assert shape.left + cols.min() <= 60 <= shape.left + cols.max()
        assert 0.0 <= shape.detail.min() and shape.detail.max() <= 1.0


def test_lymphocytes_are_smaller_than_macrophages() -> None:
    rng = np.random.default_rng(0)
    small = [draw_shape(rng, 2, (30.0, 30.0)).mask.sum() for _ in range(20)]
    large = [draw_shape(rng, 4, (30.0, 30.0)).mask.sum() for _ in range(20)]
    assert max(small) < min(large)


def test_clip_to_image_cuts_the_crop_and_drops_shapes_outside() -> None:
    mask = np.ones((10, 10), bool)
    shape = Shape(-3, 95, mask, np.zeros((10, 10)))
    clipped = clip_to_image(shape, 50, 100)
    assert (clipped.top, clipped.left, clipped.mask.shape) == (0, 95, (7, 5))
    assert clip_to_image(Shape(60, 0, mask, np.zeros((10, 10))), 50, 100) is None


def test_classes_above_four_repeat_a_shape_in_another_colour() -> None:
    assert [base_class(k) for k in range(1, 10)] == [1, 2, 3, 4, 1, 2, 3, 4, 1]
    assert len(CLASS_NAMES) == 4
    first, fifth, ninth = class_style(1), class_style(5), class_style(9)
    assert fifth.texture == first.texture and fifth.speckle == first.speckle
    assert len({first.color, fifth.color, ninth.color}) == 3
    assert sorted(fifth.color) == sorted(first.color)  # the same channels, rotated
