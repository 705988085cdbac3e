"""Tests for cellseg_d2.inference.measure: the same numbers as regionprops, faster."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from cellseg_d2.inference.crop_mosaic import pack_crops
from cellseg_d2.inference.measure import _hull, _lattice_counts, measure_cell, measure_mosaic


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = [
        np.ones((1, 1), bool),  # one pixel
        np.ones((1, 7), bool),  # a line: no area to a hull of centres
        np.eye(5, dtype=bool),  # a diagonal: pixels touching at corners
        np.pad(np.ones((4, 6), bool), 2),  # a rectangle in a padded crop
    ]
    ring = np.ones((9, 9), bool)
    ring[3:6, 3:6] = False  # a hole
    masks.append(ring)
    yy, xx = np.mgrid[:31, :23]
    masks.append(((yy - 15) / 14.0) ** 2 + ((xx - 11) / 6.0) ** 2 <= 1)  # elongated ellipse
    for _ in range(40):
        blob = rng.random((rng.integers(3, 25), rng.integers(3, 25))) < 0.6
        masks.append(blob)
    return masks


@pytest.mark.parametrize("index", range(46))
def test_every_measure_equals_regionprops(index: int) -> None:
    mask = _masks()[index]
    if not mask.any():
        pytest.skip("empty draw")
    rgb = np.random.default_rng(index).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    (region,) = measure.regionprops(mask.astype(np.uint8), intensity_image=rgb)
    got = measure_cell(mask, rgb)
    assert got.area == region.area
    assert got.centroid_row == pytest.approx(region.centroid[0], abs=1e-12)
    assert got.centroid_col == pytest.approx(region.centroid[1], abs=1e-12)
    assert got.perimeter == pytest.approx(region.perimeter, abs=1e-12)
    assert got.eccentricity == pytest.approx(region.eccentricity, abs=1e-9)
    assert got.solidity == pytest.approx(region.solidity, abs=1e-12)
    assert got.mean_rgb == pytest.approx(tuple(region.intensity_mean), abs=1e-9)


def test_empty_or_mismatched_crops_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        measure_cell(np.zeros((3, 3), bool), np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        measure_cell(np.ones((3, 3), bool), np.zeros((3, 4, 3), np.uint8))


def test_a_mosaic_of_cells_measures_each_as_regionprops() -> None:
    """All the masks measured at once, on one image, equal regionprops on each alone."""
    masks = [mask for mask in _masks() if mask.any()]
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (120, 140, 3), dtype=np.uint8)
    positions = np.array(
        [[rng.integers(0, 121 - m.shape[0]), rng.integers(0, 141 - m.shape[1])] for m in masks]
    )
    got = measure_mosaic(pack_crops(masks), image, positions)
    for mask, (top, left), cell in zip(masks, positions, got, strict=True):
        rgb = image[top : top + mask.shape[0], left : left + mask.shape[1]]
        (region,) = measure.regionprops(mask.astype(np.uint8), intensity_image=rgb)
        assert cell.area == region.area
        assert (cell.centroid_row, cell.centroid_col) == pytest.approx(region.centroid, abs=1e-12)
        assert cell.perimeter == pytest.approx(region.perimeter, abs=1e-12)
        assert cell.eccentricity == pytest.approx(region.eccentricity, abs=1e-9)
        assert cell.solidity == pytest.approx(region.solidity, abs=1e-12)
        assert cell.mean_rgb == pytest.approx(tuple(region.intensity_mean), abs=1e-9)


def test_lattice_counts_equal_grid_points_in_poly() -> None:
    """The exact whole-number count inside or on each hull, against scikit-image's."""
    rng = np.random.default_rng(11)
    hulls, expected = [], []
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(1, 30, 2))
        rows, cols = np.nonzero(rng.random(shape) < rng.uniform(0.02, 0.5))
        if rows.size == 0:
            continue
        hull = _hull(rows, cols)
        hulls.append(hull)
        inside = measure.grid_points_in_poly(shape, hull.astype(np.float64), binarize=False)
        expected.append(int(np.count_nonzero(inside >= 1)))
    assert _lattice_counts(hulls).tolist() == expected


def test_a_crop_off_the_image_or_an_empty_one_is_refused() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="16x16 crop at row 20, column 20 runs off"):
        measure_mosaic(pack_crops([np.ones((16, 16), bool)]), image, np.array([[20, 20]]))
    with pytest.raises(ValueError, match="empty"):
        measure_mosaic(pack_crops([np.ones((2, 2), bool), np.zeros((2, 2), bool)]), image)
