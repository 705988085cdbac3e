"""A cell's pixels as polygons along the pixel edges: the GeoJSON geometry of a pixel set.

Coordinates are QuPath's: x to the right, y down, in pixels of the image, with pixel
``(row, col)`` covering ``[col, col + 1) x [row, row + 1)``, so the corner of pixel (0, 0) is at
(0, 0) and its centre at (0.5, 0.5).

Why along the pixel edges: the polygon is then exactly the union of the cell's pixel squares.
Its area is the pixel count and its centroid the mean of the pixel centres, which is what the
per-cell table reports, so the GeoJSON and the table agree to the last digit; and since no pixel
centre lies on an edge, a centre-sampling rasteriser (QuPath, ``skimage.draw.polygon``, the
``qupath`` importer) gives back exactly the cell's pixels. (Marching squares alone cuts every
convex corner by 1/8 px², which made polygons 0.5 px² smaller than the cell and moved their
centroids.)

How: the crops are packed into one mosaic (:mod:`~cellseg_d2.inference.crop_mosaic`), doubled
in size (each pixel a 2x2 block) and OpenCV's ``findContours`` traces the *background*, once for
all cells. OpenCV takes foreground as 8-connected and background as 4-connected, so tracing the
background makes each 4-connected piece of a cell a hole of the background, and each hole of a
cell (8-connected background, as a pixel set's holes are) an island. Each traced point is the
centre of a boundary pixel of the doubled image, a quarter pixel from a pixel corner of the
original: rounding gives the corner exactly (doubling is what keeps the two sides of a
one-pixel-wide line apart). Where a ring passes a corner twice (pixels or holes touching only at
a corner), it is split there into rings that touch, which keeps every ring simple (OGC-valid:
pieces and holes may touch at a point). One ``findContours`` per tile instead of one
marching-squares run per cell is what made outlining cheap next to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from skimage import measure

from cellseg_d2.inference.crop_mosaic import CropMosaic, pack_crops, ring_neighbours

__all__ = ["mask_to_polygons", "masks_to_polygons", "mosaic_polygons"]

Ring = list[list[int]]


def _split_at_repeats(ring: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Cut a ring (not closed) that passes a point twice into rings that pass it once each."""
    loops: list[list[tuple[int, int]]] = []
    path: list[tuple[int, int]] = []
    position: dict[tuple[int, int], int] = {}
    for point in ring:
        if point in position:
            start = position[point]
            loops.append(path[start:])
            for dropped in path[start + 1 :]:
                del position[dropped]
            del path[start + 1 :]
        else:
            position[point] = len(path)
            path.append(point)
    loops.append(path)
    return loops


def _signed_area(ring: list[tuple[int, int]]) -> int:
    """Shoelace sum (twice the area) of a ring in (x, y) with y pointing down: negative for a
    piece's outer ring as this module orients it, positive for a hole."""
    xs = np.array([x for x, _ in ring], np.int64)
    ys = np.array([y for _, y in ring], np.int64)
    return int(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def _turning_corners(contours: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The pixel corners where each traced contour of the doubled image turns, all contours at
    once: ``(corners, owner)``, ``(x, y)`` corners in the mosaic and the contour index of each.

    A doubled pixel ``p`` has its centre at ``(p + 0.5) / 2`` original pixels, a quarter pixel
    from the corner it rounds to. Consecutive repeats and points in the middle of a straight
    run are dropped. Order within a contour is OpenCV's (reversed by the caller).
    """
    lengths = np.array([len(contour) for contour in contours], np.int64)
    owner = np.repeat(np.arange(len(contours)), lengths)
    xy = np.rint((np.concatenate(contours).reshape(-1, 2) + 0.5) / 2).astype(np.int64)
    for step in ("repeats", "straight"):
        _, _, prev, following = ring_neighbours(owner)
        if step == "repeats":
            keep = np.any(xy != xy[prev], axis=1)
        else:
            before, after = xy - xy[prev], xy[following] - xy
            keep = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
        xy, owner = xy[keep], owner[keep]
    return xy, owner


def _pieces(
    outers: list[tuple[int, list[tuple[int, int]]]], holes: list[list[tuple[int, int]]]
) -> list[list[list[tuple[int, int]]]]:
    """Outer rings (with twice their area) and holes of one crop as ``[outer, *holes]`` pieces,
    smallest outer first, each hole in the innermost piece around it (an island inside
    another piece's hole is a piece of its own)."""
    pieces = [[ring] for _, ring in sorted(outers, key=lambda item: item[0])]
    for hole in holes:
        if len(pieces) == 1:
            pieces[0].append(hole)
            continue
        # The middle of the hole's first edge lies on no other ring (a pixel edge separates one
        # cell pixel from one background pixel, so it belongs to one ring only).
        probe = np.mean(np.array(hole[:2], float), axis=0, keepdims=True)
        for piece in pieces:
            if measure.points_in_poly(probe, np.array(piece[0], float))[0]:
                piece.append(hole)
                break
    return pieces


def mosaic_polygons(
    mosaic: CropMosaic, offsets: np.ndarray | None = None
) -> list[list[list[Ring]]]:
    """Pixel-edge polygons of every crop of a mosaic, in one trace (see the module notes).

    Args:
        mosaic: the packed crops.
        offsets: ``(n, 2)`` ``(x, y)`` added to each crop's vertices (default: none, the
            crop's own frame).

    Returns:
        Per crop, GeoJSON ``MultiPolygon`` coordinates (pixel corners, whole numbers): per
        piece ``[outer, *holes]``, each ring closed. Pieces are the 4-connected groups of
        pixels (8-connected groups split where they touch only at a corner); a crop without
        pixels has none.
    """
    count = len(mosaic)
    outers: list[list] = [[] for _ in range(count)]
    holes: list[list] = [[] for _ in range(count)]
    background = (mosaic.labels == 0).astype(np.uint8)
    doubled = np.repeat(np.repeat(background, 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(doubled, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    # the crop of each contour: the slot under its first point (-1: the mosaic's outer edge)
    firsts = np.array([contour[0, 0] for contour in contours], np.int64).reshape(-1, 2) // 2
    crops = mosaic.slots[firsts[:, 1], firsts[:, 0]] if len(contours) else np.zeros(0, int)
    contours = [contour for contour, crop in zip(contours, crops, strict=True) if crop >= 0]
    crops = crops[crops >= 0]
    if not contours:
        return [[] for _ in range(count)]
    xy, owner = _turning_corners(contours)
    shift = -mosaic.origins[:, ::-1] + (0 if offsets is None else np.asarray(offsets, np.int64))
    xy = xy + shift[crops[owner]]
    # twice the signed area of each contour, and whether it passes a corner twice
    starts, ends, _, following = ring_neighbours(owner)
    cross = xy[:, 0] * xy[following, 1] - xy[:, 1] * xy[following, 0]
    signed = np.add.reduceat(cross, starts)
    corner = xy - xy.min(axis=0)
    span = int(corner.max()) + 1
    keys = np.sort((owner * span + corner[:, 0]) * span + corner[:, 1])
    repeats = set((keys[1:][keys[1:] == keys[:-1]] // (span * span)).tolist())
    points = xy.tolist()
    for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        crop = int(crops[owner[start]])
        ring = points[start:end][::-1]  # this module's orientation: OpenCV's reversed
        if int(owner[start]) not in repeats:
            if len(ring) >= 3:
                _sort_ring(ring, -int(signed[index]), outers[crop], holes[crop])
            continue
        for loop in _split_at_repeats([(x, y) for x, y in ring]):
            if len(loop) >= 3:
                _sort_ring([list(p) for p in loop], _signed_area(loop), outers[crop], holes[crop])
    return [
        [[[*ring, ring[0]] for ring in piece] for piece in _pieces(crop_outers, crop_holes)]
        for crop_outers, crop_holes in zip(outers, holes, strict=True)
    ]


def _sort_ring(ring: list, signed: int, outers: list, holes: list) -> None:
    """File a ring as an outer ring (negative ``signed``: twice its signed area) or a hole."""
    if signed < 0:
        outers.append((-signed, ring))
    elif signed > 0:
        holes.append(ring)


def mask_to_polygons(mask: np.ndarray, top: int = 0, left: int = 0) -> list[list[Ring]]:
    """Polygons with holes around one mask's pixels, along the pixel edges.

    Args:
        mask: bool crop.
        top, left: the crop's position in the image.

    Returns:
        GeoJSON ``MultiPolygon`` coordinates, as :func:`mosaic_polygons`, shifted to the
        image; empty for an empty mask.
    """
    (pieces,) = masks_to_polygons([mask], [(top, left)])
    return pieces


def masks_to_polygons(
    masks: Sequence[np.ndarray], positions: Sequence[tuple[int, int]]
) -> list[list[list[Ring]]]:
    """:func:`mask_to_polygons` of many crops in one trace (``positions``: each crop's
    ``(top, left)`` in the image)."""
    if not masks:
        return []
    offsets = np.asarray(positions, np.int64).reshape(-1, 2)[:, ::-1]
    return mosaic_polygons(pack_crops(masks), offsets)
