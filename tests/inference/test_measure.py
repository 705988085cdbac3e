"""Tests for cellseg_d2.inference.measure: the same numbers as regionprops, faster."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from cellseg_d2.inference.measure import measure_cell


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
