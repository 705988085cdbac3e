"""Pixel-edge outlines: exact area, centroid and pixels, valid geometry, holes and islands."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from cellseg_d2.inference.outlines import mask_to_polygons


def _shape(pieces: list) -> MultiPolygon:
    return MultiPolygon([Polygon(piece[0], piece[1:]) for piece in pieces])


@pytest.mark.parametrize("seed", range(4))
def test_outline_is_exactly_the_pixels(seed: int) -> None:
    """Random masks (holes, diagonal touches, islands): valid polygons whose area is the pixel
    count, whose centroid is the mean pixel centre (+0.5) and whose pixel-centre raster is the
    mask."""
    rng = np.random.default_rng(seed)
    top, left = 7, 3
    for _ in range(150):
        height, width = rng.integers(1, 25, 2)
        mask = rng.random((height, width)) < rng.uniform(0.2, 0.9)
        if not mask.any():
            assert mask_to_polygons(mask) == []
            continue
        shape = _shape(mask_to_polygons(mask, top, left))
        assert shape.is_valid, shapely.is_valid_reason(shape)
        assert shape.area == mask.sum()
        ys, xs = np.nonzero(mask)
        assert shape.centroid.x == pytest.approx(left + xs.mean() + 0.5, abs=1e-9)
        assert shape.centroid.y == pytest.approx(top + ys.mean() + 0.5, abs=1e-9)
        rows, cols = np.mgrid[0:height, 0:width]
        inside = shapely.contains_xy(shape, left + cols + 0.5, top + rows + 0.5)
        assert np.array_equal(inside, mask)


def test_island_in_hole_is_its_own_piece_and_vertices_are_corners() -> None:
    mask = np.ones((11, 11), bool)
    mask[2:9, 2:9] = False
    mask[4:7, 4:7] = True  # an island inside the hole
    pieces = mask_to_polygons(mask, top=10, left=20)
    assert sorted(len(piece) for piece in pieces) == [1, 2]
    island = next(piece for piece in pieces if len(piece) == 1)
    assert len(island[0]) == 5 and Polygon(island[0]).equals(box(24, 14, 27, 17))
    xs = [x for piece in pieces for ring in piece for x, _ in ring]
    assert min(xs) == 20 and max(xs) == 31  # pixel corners: left edge to right edge
    assert all(type(v) is int for piece in pieces for ring in piece for p in ring for v in p)


def test_pixels_touching_at_a_corner_are_two_pieces() -> None:
    mask = np.array([[1, 0], [0, 1]], bool)
    pieces = mask_to_polygons(mask)
    assert len(pieces) == 2 and all(len(piece) == 1 for piece in pieces)
    assert _shape(pieces).is_valid and _shape(pieces).area == 2
