"""Polygon rings to pixels: a pixel belongs to a ring when its centre (c + 0.5, r + 0.5) is
inside, on an outer ring counts as inside, on a hole's ring as outside; crops are cut to the
image."""

from __future__ import annotations

import numpy as np

from cellseg_d2.data.importers.raster import rings_to_mask


def _ring(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=float)


def test_rings_to_mask_holes_and_clipping() -> None:
    square = np.array([[-2, -2], [6, -2], [6, 6], [-2, 6]], float)
    hole = np.array([[2, 2], [4, 2], [4, 4], [2, 4]], float)
    top, left, crop = rings_to_mask([square], [hole], 4, 5)
    assert (top, left, crop.shape) == (0, 0, (4, 5))
    expected = np.ones((4, 5), bool)
    expected[2:4, 2:4] = False
    assert np.array_equal(crop, expected)
    assert rings_to_mask([square + 50], [], 4, 5)[2].size == 0


def test_rectangle_on_pixel_corners_covers_the_pixels_inside() -> None:
    # x from 1 to 4, y from 1 to 3: columns 1..3 and rows 1..2 have their centres inside.
    top, left, crop = rings_to_mask([_ring((1, 1), (4, 1), (4, 3), (1, 3))], [], 10, 10)
    assert (top, left) == (1, 1)
    expected = np.zeros((3, 4), bool)  # the box runs to ceil(max) + 1
    expected[0:2, 0:3] = True
    assert np.array_equal(crop, expected)


def test_outline_through_boundary_centres_fills_back_to_the_same_pixels() -> None:
    # The centres of a 3x3 block's boundary pixels (rows 2..4, columns 3..5): on an outer ring,
    # a centre counts as inside, so the block comes back whole.
    ring = _ring((3.5, 2.5), (5.5, 2.5), (5.5, 4.5), (3.5, 4.5))
    top, left, crop = rings_to_mask([ring], [], 10, 10)
    full = np.zeros((10, 10), bool)
    full[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    expected = np.zeros((10, 10), bool)
    expected[2:5, 3:6] = True
    assert np.array_equal(full, expected)


def test_centre_on_a_hole_ring_is_outside() -> None:
    outer = _ring((0, 0), (6, 0), (6, 6), (0, 6))
    hole = _ring((2.5, 2.5), (3.5, 2.5), (3.5, 3.5), (2.5, 3.5))  # through 4 pixel centres
    top, left, crop = rings_to_mask([outer], [hole], 6, 6)
    assert (top, left, crop.shape) == (0, 0, (6, 6))
    expected = np.ones((6, 6), bool)
    expected[2:4, 2:4] = False
    assert np.array_equal(crop, expected)


def test_several_outer_rings_are_united_in_one_crop() -> None:
    a = _ring((0, 0), (2, 0), (2, 2), (0, 2))
    b = _ring((5, 3), (7, 3), (7, 4), (5, 4))
    top, left, crop = rings_to_mask([a, b], [], 8, 8)
    assert (top, left, crop.shape) == (0, 0, (5, 8))
    expected = np.zeros((5, 8), bool)
    expected[0:2, 0:2] = True
    expected[3, 5:7] = True
    assert np.array_equal(crop, expected)
    assert crop.dtype == bool


def test_a_hole_is_cleared_even_over_another_outer_ring() -> None:
    # Holes are cleared after every outer ring is filled: one ring cannot refill another's hole.
    outer = _ring((0, 0), (4, 0), (4, 4), (0, 4))
    hole = _ring((1, 1), (3, 1), (3, 3), (1, 3))
    top, left, crop = rings_to_mask([outer, hole], [hole], 4, 4)
    expected = np.ones((4, 4), bool)
    expected[1:3, 1:3] = False
    assert (top, left) == (0, 0) and np.array_equal(crop, expected)


def test_extra_columns_beyond_x_y_are_ignored() -> None:
    with_z = np.array([[1, 1, 9], [3, 1, 9], [3, 3, 9], [1, 3, 9]], float)
    assert np.array_equal(
        rings_to_mask([with_z], [], 6, 6)[2], rings_to_mask([with_z[:, :2]], [], 6, 6)[2]
    )


def test_no_ring_or_ring_outside_gives_an_empty_crop() -> None:
    for result in (
        rings_to_mask([], [], 5, 5),
        rings_to_mask([_ring((-9, -9), (-5, -9), (-5, -5))], [], 5, 5),
        rings_to_mask([_ring((5, 0), (9, 0), (9, 4))], [], 5, 5),  # starts at the right edge
    ):
        top, left, crop = result
        assert (top, left, crop.shape, crop.dtype) == (0, 0, (0, 0), bool)
