"""Stitching: level-0 mapping, ownership by box centre, the seam-duplicate safety net."""

from __future__ import annotations

import json

import numpy as np
from skimage.draw import polygon as draw_polygon

from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_stitch import (
    CellPixels,
    drop_seam_duplicates,
    owned_detections,
    tile_cells,
)
from cellseg_d2.inference.slide_tiles import plan_slide_tiles
from tests.inference.slide_fakes import FakeSlideInfo


def _info(width: int = 200, height: int = 100) -> FakeSlideInfo:
    return FakeSlideInfo(None, width, height, ((width, height),), (1.0,), 0.5, (0, 0), "fake")


def _square(top: int, left: int, size: int = 10, category: int = 0, score: float = 0.9):
    return Detection(category, score, top, left, np.ones((size, size), bool))


def test_cells_map_to_level0_and_keep_their_pixels() -> None:
    tiles = plan_slide_tiles(_info(), 1.0, tile_size=64, overlap=16)
    tile = next(t for t in tiles if t.x > 0 and t.y > 0)
    image = np.zeros((tile.model_height, tile.model_width, 3), np.uint8)
    image[..., 2] = 200  # red in BGR
    ring = np.ones((7, 9), bool)
    ring[2:5, 3:6] = False  # a hole
    cx, cy = tile.core[0] - tile.x + 2, tile.core[1] - tile.y + 2
    [cell] = tile_cells(tile, [Detection(1, 0.8, cy, cx, ring)], image)
    assert cell.box == (tile.x + cx, tile.y + cy, tile.x + cx + 9, tile.y + cy + 7)
    assert cell.area == ring.sum() and cell.category == 1 and cell.mean_rgb[0] == 200
    ys, xs = np.nonzero(ring)
    assert (cell.centroid_x, cell.centroid_y) == (
        tile.x + cx + xs.mean() + 0.5,
        tile.y + cy + ys.mean() + 0.5,
    )
    geometry = json.loads(cell.geometry)
    assert geometry["type"] == "Polygon" and len(geometry["coordinates"]) == 2
    # rasterising the level-0 polygon at pixel centres gives back exactly the mask's pixels
    outer, hole = (np.array(r) for r in geometry["coordinates"])
    painted = np.zeros((100, 200), bool)
    painted[draw_polygon(outer[:, 1] - 0.5, outer[:, 0] - 0.5, painted.shape)] = True
    painted[draw_polygon(hole[:, 1] - 0.5, hole[:, 0] - 0.5, painted.shape)] = False
    expected = np.zeros_like(painted)
    expected[tile.y + cy : tile.y + cy + 7, tile.x + cx : tile.x + cx + 9] = ring
    np.testing.assert_array_equal(painted, expected)


def test_only_the_owner_keeps_a_cell() -> None:
    tiles = plan_slide_tiles(_info(), 1.0, tile_size=64, overlap=16)
    first, second = tiles[0], tiles[1]  # neighbours along x
    seam = first.core[2]
    image = np.zeros((64, 64, 3), np.uint8)
    # one 10 px cell centred just left of the seam, seen by both tiles
    left = seam - 6
    in_first = tile_cells(first, [_square(20, left - first.x)], image)
    in_second = tile_cells(second, [_square(20, left - second.x)], image)
    assert len(in_first) == 1 and in_second == []
    assert (first.x, first.width, seam, second.x) == (0, 64, 56, 48)
    # a cell at x 58..68 is cut by the first tile's right edge (64): its box there (58..64)
    # has its centre (61) past the seam, so the first tile does not keep the piece
    cut = Detection(0, 0.9, 20, 58, np.ones((10, 6), bool))
    assert tile_cells(first, [cut], image) == []
    assert len(tile_cells(second, [_square(20, 58 - second.x)], image)) == 1


def test_enlarged_tiles_map_back_by_the_scale() -> None:
    tiles = plan_slide_tiles(_info(), 2.0, tile_size=64, overlap=16)
    tile = tiles[0]
    assert tile.level0_per_model_pixel == (0.5, 0.5)
    [cell] = tile_cells(tile, [_square(10, 12, size=8)], np.zeros((64, 64, 3), np.uint8))
    assert cell.box == (6.0, 5.0, 10.0, 9.0) and cell.area == 16.0
    assert (cell.centroid_x, cell.centroid_y) == (8.0, 7.0)
    xs = [x for x, _ in json.loads(cell.geometry)["coordinates"][0]]
    assert (min(xs), max(xs)) == (6.0, 10.0)


def test_seam_duplicates_dropped_across_tiles_only() -> None:
    tiles = plan_slide_tiles(_info(), 1.0, tile_size=64, overlap=16)
    first, second = tiles[0], tiles[1]
    image = np.zeros((64, 64, 3), np.uint8)
    # the model put the same cell's box 2 px apart in the two tiles, across the seam
    seam = first.core[2]
    a = tile_cells(first, [_square(20, seam - 6 - first.x, score=0.7)], image)
    b = tile_cells(second, [_square(20, seam - 3 - second.x, score=0.9)], image)
    other = tile_cells(first, [_square(20, seam - 8 - first.x, score=0.95)], image)  # same tile
    assert len(a) == len(b) == len(other) == 1
    # b matches a (IoU 70/130) but not ``other`` (IoU 50/150): b, the higher score, removes a
    assert drop_seam_duplicates(a + other + b, [first, second]) == other + b
    assert drop_seam_duplicates(a + b, [first, second]) == b
    assert drop_seam_duplicates(a, [first]) == a


def test_cell_pixels_keep_the_tile_under_the_boxes_only_and_measure_the_same() -> None:
    tile = plan_slide_tiles(_info(64, 64), 1.0, tile_size=64, overlap=16)[0]
    rng = np.random.default_rng(4)
    image = rng.integers(1, 256, (64, 64, 3), dtype=np.uint8)
    detections = [
        Detection(int(rng.integers(2)), 0.9, int(top), int(left), rng.random((9, 7)) < 0.6)
        for top, left in rng.integers(0, 55, (12, 2))
    ]
    owned = [det for det, _ in owned_detections(tile, detections)]
    pixels = CellPixels.of(image, owned)
    rebuilt = pixels.image()
    under = np.zeros((64, 64), bool)
    for det in owned:
        under[det.top : det.top + 9, det.left : det.left + 7] = True
    np.testing.assert_array_equal(rebuilt[under], image[under])
    assert not rebuilt[~under].any() and under.sum() < under.size
    assert tile_cells(tile, owned, pixels) == tile_cells(tile, detections, image)
