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

How: ``skimage.measure.find_contours`` at level 0.5 walks the boundary through the midpoints of
the pixel edges between a cell pixel and a background pixel; where it cuts a corner diagonally,
the pixel corner between the two midpoints is the polygon's vertex. Where two cell pixels touch
only at a corner, a ring passes that corner twice; it is split there into two rings that touch,
which keeps every ring simple (OGC-valid: pieces and holes may touch at a point).
"""

from __future__ import annotations

import numpy as np
from skimage import measure

__all__ = ["mask_to_polygons"]

Ring = list[list[int]]


def _corner_ring(contour: np.ndarray) -> list[tuple[int, int]]:
    """The pixel corners where a closed marching-squares contour turns, as ``(x, y)``.

    ``contour`` holds ``(row, col)`` points of a mask padded by one pixel; each lies on the
    midpoint of a pixel edge, i.e. one coordinate is a whole number of pixels from a corner and
    the other half a pixel. A step changing both coordinates by 0.5 cuts a corner: the corner is
    the point taking the whole-pixel coordinate of each end.
    """
    # padded pixel centre (row, col) -> pixel-corner coordinates of the unpadded mask:
    # the centre of padded pixel c is at c - 1 + 0.5
    xy = np.round((contour[:, ::-1] - 0.5) * 2) / 2
    start, end = xy[:-1], xy[1:]
    diagonal = np.all(np.abs(end - start) == 0.5, axis=1)
    start, end = start[diagonal], end[diagonal]
    corners = np.where(start % 1 == 0, start, end).astype(np.int64)
    return [(int(x), int(y)) for x, y in corners]


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
    """Shoelace sum (twice the area) of a ring in (x, y) with y pointing down: negative for the
    outer rings of ``find_contours(positive_orientation="high")``, positive for holes."""
    xs = np.array([x for x, _ in ring], np.int64)
    ys = np.array([y for _, y in ring], np.int64)
    return int(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def mask_to_polygons(mask: np.ndarray, top: int = 0, left: int = 0) -> list[list[Ring]]:
    """Polygons with holes around a mask's pixels, along the pixel edges (see module notes).

    Args:
        mask: bool crop.
        top, left: the crop's position in the image.

    Returns:
        GeoJSON ``MultiPolygon`` coordinates: per piece ``[outer, *holes]``, each ring a closed
        ``[[x, y], ...]`` list of whole numbers (pixel corners). Pieces are 8-connected groups of
        pixels, split where they touch only at a corner; empty for an empty mask.
    """
    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    contours = measure.find_contours(
        padded, 0.5, fully_connected="low", positive_orientation="high"
    )
    outers: list[tuple[int, list[tuple[int, int]]]] = []
    holes: list[list[tuple[int, int]]] = []
    for contour in contours:
        for ring in _split_at_repeats(_corner_ring(contour)):
            signed = _signed_area(ring)
            if signed < 0:
                outers.append((-signed, ring))
            else:
                holes.append(ring)
    # Smallest outer ring first: a hole belongs to the innermost piece around it (an island
    # inside another piece's hole is a piece of its own).
    pieces = [[ring] for _, ring in sorted(outers, key=lambda item: item[0])]
    for hole in holes:
        # The middle of the hole's first edge lies on no other ring (a pixel edge separates one
        # cell pixel from one background pixel, so it belongs to one ring only).
        probe = np.mean(np.array(hole[:2], float), axis=0, keepdims=True)
        for piece in pieces:
            if measure.points_in_poly(probe, np.array(piece[0], float))[0]:
                piece.append(hole)
                break

    def closed(ring: list[tuple[int, int]]) -> Ring:
        return [[x + left, y + top] for x, y in [*ring, ring[0]]]

    return [[closed(ring) for ring in piece] for piece in pieces]
