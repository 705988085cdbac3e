"""One cell's measurements for the per-cell tables, equal to ``skimage.measure.regionprops``.

Why not regionprops itself: it costs about 1 ms a cell (its moments, inertia tensor and convex
hull go through general n-dimensional code and SciPy's Qhull), which made measuring, not the
model, the slowest step of a whole-slide run with a few hundred cells per tile. The same
quantities computed directly on the cell's pixel coordinates cost a tenth of that:

- ``area``: the pixel count; ``centroid``: the mean pixel index (row, col);
- ``perimeter``: :func:`skimage.measure.perimeter` with 4-connectivity, the function regionprops
  itself calls;
- ``eccentricity``: from the 2x2 inertia tensor of the pixel coordinates, as regionprops;
- ``solidity``: area over the pixel count of the convex hull image, the hull taken (as
  :func:`skimage.morphology.convex_hull_image` does) around the midpoints of the pixels' edges,
  by OpenCV instead of Qhull, and filled with the same ``grid_points_in_poly``;
- ``mean_rgb``: the mean of each channel over the cell's pixels.

The test compares every value with regionprops on random and edge-case masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from skimage import measure

__all__ = ["CellMeasures", "measure_cell"]

#: The four midpoints of a pixel's edges around its centre (convex_hull_image's offsets).
_DIAMOND = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]], np.float32)


@dataclass(frozen=True)
class CellMeasures:
    """What the per-cell tables report of one cell, in the pixels of its mask.

    Attributes:
        area: pixel count.
        centroid_row, centroid_col: mean pixel index in the mask crop (add the crop's corner and
            0.5 for QuPath's pixel-centre convention).
        perimeter: regionprops ``perimeter`` (4-connectivity).
        eccentricity, solidity: regionprops ``eccentricity`` and ``solidity``.
        mean_rgb: mean R, G, B over the cell's pixels.
    """

    area: int
    centroid_row: float
    centroid_col: float
    perimeter: float
    eccentricity: float
    solidity: float
    mean_rgb: tuple[float, float, float]


def _eccentricity(rows: np.ndarray, cols: np.ndarray) -> float:
    """regionprops' eccentricity: from the eigenvalues of the normalised central moments."""
    dr = rows - rows.mean()
    dc = cols - cols.mean()
    count = rows.size
    a = float(np.dot(dc, dc)) / count  # mu02 / mu00: spread along the columns
    c = float(np.dot(dr, dr)) / count  # mu20 / mu00: spread along the rows
    b = -float(np.dot(dr, dc)) / count
    # eigenvalues of [[a, b], [b, c]], largest first, clipped at 0 as regionprops does
    half_trace = (a + c) / 2
    root = math.sqrt(max(((a - c) / 2) ** 2 + b * b, 0.0))
    large, small = max(half_trace + root, 0.0), max(half_trace - root, 0.0)
    if large == 0:
        return 0.0
    return math.sqrt(1 - small / large)


def _convex_area(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> int:
    """Pixels of :func:`skimage.morphology.convex_hull_image` of ``mask``, without Qhull."""
    points = np.stack([rows, cols], axis=1).astype(np.float32)
    if len(points) > 3:
        points = cv2.convexHull(points).reshape(-1, 2)
    corners = (points[:, None, :] + _DIAMOND).reshape(-1, 2)
    vertices = cv2.convexHull(corners).reshape(-1, 2).astype(np.float64)
    inside = measure.grid_points_in_poly(mask.shape, vertices, binarize=False)
    return int(np.count_nonzero(inside >= 1))


def measure_cell(mask: np.ndarray, rgb: np.ndarray) -> CellMeasures:
    """Measure one cell from its mask crop and the image pixels under it.

    Args:
        mask: bool (or 0/1) ``H x W`` crop holding at least one pixel.
        rgb: ``H x W x 3`` image pixels of the same crop, channels R, G, B.

    Returns:
        The :class:`CellMeasures`.

    Raises:
        ValueError: an empty mask or a crop of another shape.
    """
    mask = np.asarray(mask, dtype=bool)
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"image crop {rgb.shape[:2]} differs from the mask {mask.shape}")
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("an empty mask has no measurements")
    rows_f, cols_f = rows.astype(np.float64), cols.astype(np.float64)
    pixels = rgb[rows, cols].astype(np.float64)
    mean = pixels.mean(axis=0)
    return CellMeasures(
        area=int(rows.size),
        centroid_row=float(rows_f.mean()),
        centroid_col=float(cols_f.mean()),
        perimeter=float(measure.perimeter(mask, 4)),
        eccentricity=_eccentricity(rows_f, cols_f),
        solidity=rows.size / _convex_area(mask, rows, cols),
        mean_rgb=(float(mean[0]), float(mean[1]), float(mean[2])),
    )
