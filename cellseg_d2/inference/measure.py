"""Cell measurements for the per-cell tables, equal to ``skimage.measure.regionprops``.

Why not regionprops itself: it costs about 1 ms a cell (its moments, inertia tensor and convex
hull go through general n-dimensional code and SciPy's Qhull), and even the same quantities
computed one crop at a time cost about 0.3 ms, mostly the fixed cost of a dozen small calls.
That made measuring, not the model, the slowest step of a whole-slide run with a few hundred
cells per tile. So all of a tile's (or image's) cells are measured at once, on one mosaic of
their crops (:mod:`~cellseg_d2.inference.crop_mosaic`):

- ``area``: the pixel count; ``centroid``: the mean pixel index (row, col); ``mean_rgb``: the
  mean of each channel over the cell's pixels; all by ``np.bincount`` over the mosaic;
- ``eccentricity``: from the 2x2 inertia tensor of the pixel coordinates, as regionprops;
- ``perimeter``: :func:`skimage.measure.perimeter` with 4-connectivity (the function
  regionprops calls), its erosion, neighbourhood codes and weights applied to the whole mosaic
  and counted per cell;
- ``solidity``: area over the pixel count of the convex hull image, the hull taken (as
  :func:`skimage.morphology.convex_hull_image` does) around the midpoints of the pixels' edges,
  by OpenCV instead of Qhull, and its pixels counted exactly per row for all cells at once
  (what ``grid_points_in_poly`` counts).

The tests compare every value with regionprops on random and edge-case masks, alone and packed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

from cellseg_d2.inference.crop_mosaic import CropMosaic, pack_crops, ring_neighbours

__all__ = ["CellMeasures", "measure_cell", "measure_mosaic"]

#: The four midpoints of a pixel's edges around its centre (convex_hull_image's offsets).
_DIAMOND = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]], np.float32)
#: skimage.measure.perimeter's 4-connected erosion, neighbourhood code kernel and code weights.
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
_CODES = np.array([[10, 2, 10], [2, 1, 2], [10, 2, 10]], np.uint8)
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2


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


def _eccentricity(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """regionprops' eccentricity from the normalised central moments of each cell: ``a`` the
    spread along the columns (mu02 / mu00), ``c`` along the rows (mu20 / mu00), ``b`` minus
    the cross term (-mu11 / mu00)."""
    # eigenvalues of [[a, b], [b, c]], largest first, clipped at 0 as regionprops does
    half_trace = (a + c) / 2
    root = np.sqrt(np.maximum(((a - c) / 2) ** 2 + b * b, 0.0))
    large, small = np.maximum(half_trace + root, 0.0), np.maximum(half_trace - root, 0.0)
    safe = np.where(large == 0, 1.0, large)
    return np.where(large == 0, 0.0, np.sqrt(np.maximum(1 - small / safe, 0.0)))


def _perimeters(mosaic: CropMosaic, count: int) -> np.ndarray:
    """:func:`skimage.measure.perimeter` (4-connectivity) of every crop at once: the same
    erosion, neighbourhood codes and weights, counted per crop (the mosaic keeps crops three
    pixels apart, so no 3x3 neighbourhood sees two)."""
    cells = mosaic.labels > 0
    border = cells & ~ndi.binary_erosion(cells, _CROSS, border_value=0)
    codes = ndi.convolve(border.astype(np.uint8), _CODES, mode="constant", cval=0)
    where = np.flatnonzero(border)
    crop = mosaic.labels.ravel()[where].astype(np.int64) - 1
    histogram = np.bincount(crop * 50 + codes.ravel()[where], minlength=count * 50)
    return histogram.reshape(count, 50) @ _PERIMETER_WEIGHTS


def _hull(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Vertices (row, col) of the hull :func:`skimage.morphology.convex_hull_image` fills: around
    the midpoints of the pixels' edges, by OpenCV instead of Qhull."""
    points = np.stack([rows, cols], axis=1).astype(np.float32)
    if len(points) > 3:
        points = cv2.convexHull(points).reshape(-1, 2)
    corners = (points[:, None, :] + _DIAMOND).reshape(-1, 2)
    return cv2.convexHull(corners).reshape(-1, 2)


def _lattice_counts(hulls: list[np.ndarray]) -> np.ndarray:
    """Whole-number points ``(row, col)`` inside or on each convex polygon, as
    ``grid_points_in_poly(...) >= 1`` counts them, all polygons at once.

    Vertices lie on half pixels, so twice them are whole numbers: each edge crossing pixel row
    ``j`` does so at ``x = num / den`` with whole ``num`` and ``den``. A quotient that is a whole
    number is exact in floating point and any other is at least ``1 / den`` from one, so the
    floor and ceiling below are exact. Horizontal edges are skipped: their ends are the ends of
    their neighbours.
    """
    sizes = np.array([len(hull) for hull in hulls], np.int64)
    cell = np.repeat(np.arange(len(hulls)), sizes)
    twice = np.rint(np.concatenate(hulls) * 2).astype(np.int64)
    following = ring_neighbours(cell)[3]
    (y0, x0), (y1, x1) = twice.T, twice[following].T
    sloped = y0 != y1
    cell, y0, x0, y1, x1 = cell[sloped], y0[sloped], x0[sloped], y1[sloped], x1[sloped]
    first = -((-np.minimum(y0, y1)) // 2)  # ceil(lowest y / 2): the first pixel row crossed
    rows_crossed = np.maximum(y0, y1) // 2 - first + 1
    edge = np.repeat(np.arange(len(cell)), rows_crossed)
    row = (
        first[edge]
        + np.arange(len(edge))
        - np.repeat(np.cumsum(rows_crossed) - rows_crossed, rows_crossed)
    )
    dy, dx = (y1 - y0)[edge], (x1 - x0)[edge]
    x = (x0[edge] * dy + (2 * row - y0[edge]) * dx) / dy
    owner = cell[edge]
    key = owner * (int(row.max() - row.min()) + 1) + (row - row.min())
    order = np.argsort(key, kind="stable")
    key, x, owner = key[order], x[order], owner[order]
    groups = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    left, right = np.minimum.reduceat(x, groups), np.maximum.reduceat(x, groups)
    inside = np.maximum(np.floor(right / 2) - np.ceil(left / 2) + 1, 0).astype(np.int64)
    return np.bincount(owner[groups], inside, minlength=len(hulls)).astype(np.int64)


def measure_mosaic(
    mosaic: CropMosaic, rgb: np.ndarray, positions: np.ndarray | None = None
) -> list[CellMeasures]:
    """Measure every crop of a mosaic at once (see the module notes).

    Args:
        mosaic: the packed crops, each holding at least one pixel.
        rgb: the ``H x W x 3`` image the crops lie on, channels R, G, B.
        positions: ``(n, 2)`` ``(top, left)`` of each crop in ``rgb`` (default: all at 0, 0).

    Returns:
        One :class:`CellMeasures` per crop, in the mosaic's order.

    Raises:
        ValueError: a crop without pixels, or one reaching outside ``rgb``.
    """
    count = len(mosaic)
    crop, rows, cols = mosaic.pixels()
    area = np.bincount(crop, minlength=count)
    if not area.all():
        raise ValueError("an empty mask has no measurements")
    place = np.zeros((count, 2), np.int64) if positions is None else np.asarray(positions)
    ends = place + mosaic.shapes
    outside = np.flatnonzero((place < 0).any(axis=1) | (ends > rgb.shape[:2]).any(axis=1))
    if len(outside):
        (top, left), (height, width) = place[outside[0]], mosaic.shapes[outside[0]]
        raise ValueError(
            f"the {height}x{width} crop at row {top}, column {left} runs off the "
            f"{rgb.shape[0]}x{rgb.shape[1]} image"
        )
    pixels = rgb[place[crop, 0] + rows, place[crop, 1] + cols].astype(np.float64)
    mean_rgb = (
        np.stack([np.bincount(crop, pixels[:, k], count) for k in range(3)], 1) / area[:, None]
    )
    rows_f, cols_f = rows.astype(np.float64), cols.astype(np.float64)
    centroid_row = np.bincount(crop, rows_f, count) / area
    centroid_col = np.bincount(crop, cols_f, count) / area
    dr, dc = rows_f - centroid_row[crop], cols_f - centroid_col[crop]
    eccentricity = _eccentricity(
        np.bincount(crop, dc * dc, count) / area,
        -np.bincount(crop, dr * dc, count) / area,
        np.bincount(crop, dr * dr, count) / area,
    )
    perimeter = _perimeters(mosaic, count)
    order = np.argsort(crop, kind="stable")
    bounds = np.cumsum(area)[:-1]
    hulls = [
        _hull(r, c) for r, c in zip(np.split(rows[order], bounds), np.split(cols[order], bounds))
    ]
    solidity = area / _lattice_counts(hulls)
    return [
        CellMeasures(
            area=int(area[i]),
            centroid_row=float(centroid_row[i]),
            centroid_col=float(centroid_col[i]),
            perimeter=float(perimeter[i]),
            eccentricity=float(eccentricity[i]),
            solidity=float(solidity[i]),
            mean_rgb=(float(mean_rgb[i, 0]), float(mean_rgb[i, 1]), float(mean_rgb[i, 2])),
        )
        for i in range(count)
    ]


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
    (measures,) = measure_mosaic(pack_crops([mask]), rgb)
    return measures
