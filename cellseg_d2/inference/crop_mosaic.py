"""Many small cell masks packed side by side into one image, so one OpenCV or NumPy call
outlines or measures them all.

Why: a slide tile holds a few hundred nuclei. Outlining and measuring them one crop at a time
costs a dozen small NumPy and scikit-image calls each, and their fixed cost (microseconds a
call) came to about half a millisecond a cell, more than the model's time for the tile. Packed
into one mosaic, the same work is a handful of whole-image calls per tile plus a short loop.

The packing keeps the crops apart: each crop sits in its own *slot* (the crop plus one pixel of
padding on every side), slots do not overlap, and a one-pixel margin runs around the mosaic.
So the pixels of two different crops are at least three pixels apart: no 3x3 neighbourhood (an
erosion, a perimeter code) and no 8-connected contour ever touches two crops, and every result
is exactly what the crop would give alone (the tests compare with one crop at a time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CropMosaic", "pack_crops", "ring_neighbours"]

#: Padding around each crop inside its slot, and the margin around the mosaic (pixels).
PAD = 1


@dataclass(frozen=True)
class CropMosaic:
    """Crops packed into one image.

    Attributes:
        labels: ``int32`` image, 0 where no crop has a pixel, ``i + 1`` on the pixels of crop
            ``i``.
        slots: ``int32`` image, ``i`` on crop ``i``'s slot (crop and padding), -1 elsewhere.
        origins: ``(n, 2)`` ``int64`` mosaic ``(row, col)`` of each crop's pixel ``(0, 0)``.
        shapes: ``(n, 2)`` ``int64`` ``(height, width)`` of each crop.
    """

    labels: np.ndarray
    slots: np.ndarray
    origins: np.ndarray
    shapes: np.ndarray

    def __len__(self) -> int:
        """The number of crops."""
        return len(self.origins)

    def pixels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every crop pixel as ``(crop index, row, col)``, rows and columns in the crop's own
        frame, in raster order of the mosaic."""
        flat = np.flatnonzero(self.labels)
        crop = self.labels.ravel()[flat].astype(np.int64) - 1
        rows, cols = np.divmod(flat, self.labels.shape[1])
        return crop, rows - self.origins[crop, 0], cols - self.origins[crop, 1]


def _shelves(shapes: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Slot positions ``(n, 2)`` of a shelf packing (tallest slots first, rows of a width about
    the square root of the total slot area) and the mosaic size, margins included."""
    slot_h = shapes[:, 0] + 2 * PAD
    slot_w = shapes[:, 1] + 2 * PAD
    width = max(int(slot_w.max()), math.ceil(math.sqrt(float(np.sum(slot_h * slot_w)))))
    positions = np.zeros((len(shapes), 2), np.int64)
    row = col = shelf_height = 0
    for index in np.argsort(-slot_h, kind="stable"):
        if col + slot_w[index] > width:
            row, col, shelf_height = row + shelf_height, 0, 0
        positions[index] = (row + PAD, col + PAD)  # the mosaic's margin
        col += int(slot_w[index])
        shelf_height = max(shelf_height, int(slot_h[index]))
    return positions, (row + shelf_height + 2 * PAD, width + 2 * PAD)


def pack_crops(masks: Sequence[np.ndarray]) -> CropMosaic:
    """Pack bool crops into one :class:`CropMosaic` (see the module notes for the spacing).

    Args:
        masks: 2-D crops (bool or 0/1), each at least 1 x 1; empty crops are allowed and simply
            have no pixels.

    Raises:
        ValueError: no crops, or a crop that is not 2-D or has a zero side.
    """
    if not masks:
        raise ValueError("no crops to pack")
    arrays = [np.asarray(mask, dtype=bool) for mask in masks]
    if any(array.ndim != 2 or 0 in array.shape for array in arrays):
        raise ValueError("every crop must be 2-D with both sides at least 1 pixel")
    shapes = np.array([array.shape for array in arrays], np.int64)
    positions, size = _shelves(shapes)
    labels = np.zeros(size, np.int32)
    slots = np.full(size, -1, np.int32)
    origins = positions + PAD
    for index, (array, (top, left), (height, width)) in enumerate(
        zip(arrays, origins, shapes, strict=True)
    ):
        slots[top - PAD : top + height + PAD, left - PAD : left + width + PAD] = index
        labels[top : top + height, left : left + width][array] = index + 1
    return CropMosaic(labels=labels, slots=slots, origins=origins, shapes=shapes)


def ring_neighbours(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where each ring of points starts and ends, and each point's neighbours in its own ring.

    Why one helper: the mosaic's outlines and hulls keep many closed rings end to end in one
    array (``owner[i]``, the ring of point ``i``; each ring's points contiguous) and walk them
    all at once; the wrap-around from a ring's last point to its first is easy to get wrong.

    Returns:
        ``(starts, ends, previous, following)``: each ring's first index and end (exclusive),
        and for each point the index of the point before and after it (cyclic in its ring).
    """
    count = len(owner)
    starts = np.flatnonzero(np.r_[count > 0, owner[1:] != owner[:-1]])
    ends = np.append(starts[1:], count)[: len(starts)]
    previous = np.arange(count) - 1
    previous[starts] = ends - 1
    following = np.arange(count) + 1
    following[ends - 1] = starts
    return starts, ends, previous, following
