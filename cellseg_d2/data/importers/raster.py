"""Polygons to pixels, with one rule for every importer that reads outlines (COCO, QuPath).

The rule: coordinates are in pixels with the *corner* of pixel (0, 0) at (0, 0), so the centre
of pixel (row r, column c) is at (x, y) = (c + 0.5, r + 0.5); a pixel belongs to a polygon when
its centre lies inside the outer ring and outside every hole. A centre exactly on an outer
ring counts as inside (so an outline traced through the centres of a mask's boundary pixels,
as OpenCV's ``findContours`` gives it, shifted by +0.5, fills back to the same pixels); a centre
exactly on a hole's ring counts as outside. This is QuPath's convention and
COCO's (pycocotools' polygon fill approximates the same rule on a 5x finer grid and differs by a
few boundary pixels per cell; filling exactly here keeps a polygon and its rasterisation in
agreement whichever format it came from). A ring that crosses itself is filled by the even-odd
rule.

Implemented with ``skimage.draw.polygon``, which fills the integer grid points inside a ring:
the ring is shifted by -0.5 px so that those points are the pixel centres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.draw import polygon as fill_polygon

__all__ = ["rings_to_mask"]


def rings_to_mask(
    exteriors: Sequence[np.ndarray], holes: Sequence[np.ndarray], height: int, width: int
) -> tuple[int, int, np.ndarray]:
    """Fill outer rings, clear holes, on an image of ``height`` x ``width`` pixels.

    Args:
        exteriors: N x 2 arrays of (x, y) points, each an outer ring (their union is filled).
        holes: N x 2 arrays of (x, y) points, each cleared after all outer rings are filled.
        height: image height; pixels outside the image are cut off.
        width: image width.

    Returns:
        ``(top, left, bool crop)``: the crop covers the rings' bounding box within the image;
        an empty crop when that box misses the image.
    """
    if not exteriors:
        return 0, 0, np.zeros((0, 0), bool)
    points = np.concatenate([np.asarray(r, dtype=np.float64)[:, :2] for r in exteriors])
    minx, miny = points.min(axis=0)
    maxx, maxy = points.max(axis=0)
    top, left = max(0, math.floor(miny)), max(0, math.floor(minx))
    bottom, right = min(height, math.ceil(maxy) + 1), min(width, math.ceil(maxx) + 1)
    if bottom <= top or right <= left:
        return 0, 0, np.zeros((0, 0), bool)
    crop = np.zeros((bottom - top, right - left), bool)
    for rings, value in ((exteriors, True), (holes, False)):
        for ring in rings:
            xy = np.asarray(ring, dtype=np.float64)
            rows, cols = fill_polygon(xy[:, 1] - 0.5 - top, xy[:, 0] - 0.5 - left, crop.shape)
            crop[rows, cols] = value
    return top, left, crop
