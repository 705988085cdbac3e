"""Packing crops into one mosaic: every crop back intact, apart from every other."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellseg_d2.inference.crop_mosaic import pack_crops, ring_neighbours


def _random_crops(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        height, width = rng.integers(1, 40, 2)
        crops.append(rng.random((height, width)) < 0.7)
    return crops


@pytest.mark.parametrize("seed", range(3))
def test_every_crop_comes_back_in_its_slot(seed: int) -> None:
    crops = _random_crops(seed, 60)
    mosaic = pack_crops(crops)
    assert len(mosaic) == 60
    for index, crop in enumerate(crops):
        (top, left), (height, width) = mosaic.origins[index], mosaic.shapes[index]
        assert (height, width) == crop.shape
        window = mosaic.labels[top : top + height, left : left + width]
        assert np.array_equal(window == index + 1, crop)
        # the slot is the crop and one pixel around it, all this crop's
        slot = mosaic.slots[top - 1 : top + height + 1, left - 1 : left + width + 1]
        assert (slot == index).all()
        assert np.count_nonzero(mosaic.slots == index) == (height + 2) * (width + 2)
    # nothing else is labelled, and a margin of one pixel runs around the mosaic
    assert np.count_nonzero(mosaic.labels) == sum(int(crop.sum()) for crop in crops)
    edge = np.ones(mosaic.slots.shape, bool)
    edge[1:-1, 1:-1] = False
    assert (mosaic.slots[edge] == -1).all() and (mosaic.labels[edge] == 0).all()


def test_pixels_of_two_crops_are_at_least_three_apart() -> None:
    """No 3x3 neighbourhood, 8-connected contour or erosion sees two crops."""
    crops = [np.ones((5, 7), bool) for _ in range(30)] + _random_crops(9, 30)
    mosaic = pack_crops(crops)
    for index in range(len(crops)):
        near = ndi.binary_dilation(mosaic.labels == index + 1, np.ones((5, 5), bool))
        others = (mosaic.labels > 0) & (mosaic.labels != index + 1)
        assert not (near & others).any()  # Chebyshev distance >= 3


def test_pixels_are_in_each_crops_own_frame() -> None:
    crops = [np.eye(3, dtype=bool), np.ones((2, 4), bool)]
    crop, rows, cols = pack_crops(crops).pixels()
    got = sorted(zip(crop.tolist(), rows.tolist(), cols.tolist(), strict=True))
    expected = [(0, i, i) for i in range(3)] + [(1, r, c) for r in range(2) for c in range(4)]
    assert got == sorted(expected)


def test_bad_crops_are_refused() -> None:
    with pytest.raises(ValueError, match="no crops"):
        pack_crops([])
    with pytest.raises(ValueError, match="2-D"):
        pack_crops([np.ones((0, 3), bool)])
    with pytest.raises(ValueError, match="2-D"):
        pack_crops([np.ones(3, bool)])


def test_ring_neighbours_wrap_around_within_each_ring() -> None:
    owner = np.array([0, 0, 0, 3, 3, 5, 5, 5, 5])
    starts, ends, previous, following = ring_neighbours(owner)
    assert starts.tolist() == [0, 3, 5] and ends.tolist() == [3, 5, 9]
    assert previous.tolist() == [2, 0, 1, 4, 3, 8, 5, 6, 7]
    assert following.tolist() == [1, 2, 0, 4, 3, 6, 7, 8, 5]
    one = ring_neighbours(np.array([7]))
    assert [a.tolist() for a in one] == [[0], [1], [0], [0]]  # a ring of one point is its own
    empty = ring_neighbours(np.zeros(0, np.int64))
    assert all(len(a) == 0 for a in empty)
