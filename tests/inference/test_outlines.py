"""Pixel-edge outlines: exact area, centroid and pixels, valid geometry, holes and islands."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from cellseg_d2.inference.outlines import mask_to_polygons, masks_to_polygons


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


def _canonical(pieces: list) -> list:
    """Pieces with each ring started at its smallest vertex, in a fixed order."""

    def ring(points: list) -> tuple:
        open_ring = [tuple(p) for p in points[:-1]]
        start = open_ring.index(min(open_ring))
        return tuple(open_ring[start:] + open_ring[:start])

    return sorted((ring(piece[0]), sorted(ring(hole) for hole in piece[1:])) for piece in pieces)


def test_many_masks_at_once_equal_one_at_a_time() -> None:
    """One trace of a packed mosaic gives each mask exactly its own outline (crops never
    merge, shifts follow each crop), empty masks included."""
    rng = np.random.default_rng(5)
    masks = [rng.random(tuple(rng.integers(1, 20, 2))) < rng.uniform(0.1, 0.9) for _ in range(80)]
    masks[3] = np.zeros((4, 4), bool)
    masks[7] = np.ones((1, 9), bool)  # a one-pixel line: both sides kept apart
    positions = [(int(i * 3), int(i * 5 + 1)) for i in range(len(masks))]
    together = masks_to_polygons(masks, positions)
    assert len(together) == len(masks) and together[3] == []
    for mask, (top, left), pieces in zip(masks, positions, together, strict=True):
        alone = mask_to_polygons(mask, top, left)
        assert _canonical(pieces) == _canonical(alone)
        if mask.any():
            assert _shape(pieces).area == mask.sum()
    assert masks_to_polygons([], []) == []


def test_rings_are_oriented_outer_negative_hole_positive() -> None:
    """The orientation the store and QuPath exports have always had: outer rings negative and
    holes positive by the shoelace sum with y down."""
    mask = np.ones((5, 5), bool)
    mask[2, 2] = False
    [[outer, hole]] = mask_to_polygons(mask)

    def shoelace(ring: list) -> int:
        return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False))

    assert shoelace(outer) == -50 and shoelace(hole) == 2
