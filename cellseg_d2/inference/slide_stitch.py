"""From a tile's detections (model pixels) to the slide's cells (level-0 pixels), each once.

Two rules make every cell come out exactly once:

1. **Ownership** (exact): a detection is kept only by the tile whose core
   (:class:`~cellseg_d2.inference.slide_tiles.SlideTile`) contains the centre of its level-0
   box. Cores partition the slide, so a cell seen whole by two tiles is kept by one, and a copy
   cut by a tile edge has its box centre outside that tile's core as long as the overlap holds
   the cell (:func:`~cellseg_d2.inference.slide_tiles.check_overlap`).
2. **Safety net**: the model is not a function of the cell alone; near an edge it may place a
   box a little differently, so two copies could fall in two cores. Among the tiles written
   together (one chunk), kept cells of different tiles whose boxes overlap with IoU above
   ``TILE_MERGE_IOU`` are the same cell and only the higher score stays
   (:func:`drop_seam_duplicates`).

Why not :func:`~cellseg_d2.inference.detections.merge_tile_detections` as a whole: it drops
every detection touching an inner tile edge, which ownership already decides exactly (and,
for a cell larger than the overlap, would drop both cut copies); and it takes integer
detections in the windows' own pixels, while here tiles are model pixels and windows level-0
pixels (different when ``scale != 1``). Its seam-aware pair search
(``tile_overlap_matches``: only boxes reaching into two windows' overlap are compared) is
reused as it is, on level-0 float boxes, followed by the same greedy pass by score.

Measurements follow the per-cell table of :mod:`~cellseg_d2.inference.export`
(:func:`~cellseg_d2.inference.measure.measure_mosaic`, regionprops' values, on the cell's mask
and the image as the model saw it), on each cell's own mask (a slide has no
label image). Lengths and areas are converted to level-0 pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cellseg_d2.inference.crop_mosaic import pack_crops
from cellseg_d2.inference.detections import (
    Detection,
    greedy_tile_survivors,
    tile_overlap_matches,
)
from cellseg_d2.inference.measure import measure_mosaic
from cellseg_d2.inference.outlines import mosaic_polygons
from cellseg_d2.inference.slide_tiles import SlideTile

__all__ = [
    "COORDINATE_DECIMALS",
    "CellPixels",
    "SlideCell",
    "drop_seam_duplicates",
    "owned_detections",
    "tile_cells",
]

#: Decimals kept of level-0 polygon vertices (sub-pixel when the model's scale differs).
COORDINATE_DECIMALS = 4


@dataclass(frozen=True)
class SlideCell:
    """One cell of a slide, in level-0 pixels of the slide (the reader's offset not added).

    Attributes:
        tile: index of the tile that owns it.
        category: 0-based class.
        score: the model's confidence.
        box: ``(x0, y0, x1, y1)`` tight box of the mask, exclusive ends (floats when the
            model's scale is not 1).
        area: mask area in level-0 pixels (model pixels / scale^2).
        centroid_x, centroid_y: mask centroid in QuPath's convention (the centre of pixel ``i``
            is at ``i + 0.5``), as the per-image table (:mod:`~cellseg_d2.inference.export`).
        perimeter: regionprops perimeter in level-0 pixels.
        eccentricity, solidity: regionprops, scale-free.
        mean_rgb: mean R, G, B of the cell in the tile the model saw.
        geometry: compact GeoJSON text of a ``Polygon`` / ``MultiPolygon`` (holes kept) with
            vertices on pixel edges: pixel ``i`` spans ``[i, i + 1]`` and its centre is
            ``i + 0.5``, the convention of :func:`~cellseg_d2.inference.outlines
            .mask_to_polygons` and QuPath. Text, not a dict: it is encoded once where the cell
            is made (a cell worker), so the model's process neither unpickles thousands of
            small lists per tile nor encodes them for the store.
    """

    tile: int
    category: int
    score: float
    box: tuple[float, float, float, float]
    area: float
    centroid_x: float
    centroid_y: float
    perimeter: float
    eccentricity: float
    solidity: float
    mean_rgb: tuple[float, float, float]
    geometry: str


def _level0_box(tile: SlideTile, det: Detection) -> tuple[float, float, float, float]:
    """The detection's tight box mapped from the tile's model pixels to level-0 pixels."""
    sx, sy = tile.level0_per_model_pixel
    x0, y0, x1, y1 = det.box
    return tile.x + x0 * sx, tile.y + y0 * sy, tile.x + x1 * sx, tile.y + y1 * sy


def _geometry(tile: SlideTile, pieces: list) -> str | None:
    """A cell's outline (:func:`~cellseg_d2.inference.outlines.mosaic_polygons`, tile pixels)
    mapped to level-0 pixels as compact GeoJSON text, or None when it has no pieces.

    Vertices are mapped a ring at a time with NumPy (a Python ``round`` per vertex cost more
    than measuring the cell); at scale 1 they stay whole numbers and need no rounding.
    """
    if not pieces:
        return None
    sx, sy = tile.level0_per_model_pixel
    if sx == 1.0 and sy == 1.0:
        mapped = [
            [[[x + tile.x, y + tile.y] for x, y in ring] for ring in piece] for piece in pieces
        ]
    else:
        factor = np.array([sx, sy])
        origin = np.array([tile.x, tile.y], np.float64)
        mapped = [
            [
                np.round(
                    origin + np.asarray(ring, np.float64) * factor, COORDINATE_DECIMALS
                ).tolist()
                for ring in piece
            ]
            for piece in pieces
        ]
    if len(mapped) == 1:
        geometry = {"type": "Polygon", "coordinates": mapped[0]}
    else:
        geometry = {"type": "MultiPolygon", "coordinates": mapped}
    return json.dumps(geometry, separators=(",", ":"))


def owned_detections(
    tile: SlideTile, detections: Sequence[Detection]
) -> list[tuple[Detection, tuple[float, float, float, float]]]:
    """The detections this tile keeps (box centre in its core, at least one pixel), each with
    its level-0 box, in the model's order: rule 1 of the module notes, in one place."""
    owned = []
    for det in detections:
        if not det.mask.any():
            continue
        box = _level0_box(tile, det)
        if tile.owns((box[0] + box[2]) / 2, (box[1] + box[3]) / 2):
            owned.append((det, box))
    return owned


@dataclass(frozen=True)
class CellPixels:
    """The pixels of a tile under some detections' boxes, the rest of the tile left out.

    Why: the cells need the tile's pixels only for their mean colour. A cell worker sent the
    whole tile (3 MB at 1024², pickled and piped) cost the model's process about as much CPU
    as the worker's own outlining and measuring; the boxes of a tile's owned cells hold a
    fraction of it. :meth:`image` rebuilds a tile whose pixels under every box are the
    original ones, so measuring gives exactly the values of the whole tile.

    Attributes:
        shape: the tile's ``(height, width, channels)``; ``dtype`` its pixels' type.
        places: ``(top, left)`` of each crop.
        crops: the tile's pixels in each detection's box (clipped to the tile).
    """

    shape: tuple[int, ...]
    dtype: str
    places: tuple[tuple[int, int], ...]
    crops: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, image: np.ndarray, detections: Sequence[Detection]) -> CellPixels:
        """Copy ``image``'s pixels under each detection's mask box."""
        places = tuple((int(d.top), int(d.left)) for d in detections)
        crops = tuple(
            np.ascontiguousarray(
                image[max(t, 0) : t + d.mask.shape[0], max(left, 0) : left + d.mask.shape[1]]
            )
            for (t, left), d in zip(places, detections)
        )
        return cls(tuple(image.shape), image.dtype.str, places, crops)

    def image(self) -> np.ndarray:
        """The tile: the crops' pixels in place, zeros elsewhere."""
        image = np.zeros(self.shape, self.dtype)
        for (top, left), crop in zip(self.places, self.crops):
            top, left = max(top, 0), max(left, 0)
            image[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        return image


def tile_cells(
    tile: SlideTile, detections: Sequence[Detection], image: np.ndarray | CellPixels
) -> list[SlideCell]:
    """The cells this tile owns, measured and in level-0 pixels, in the model's order.

    All the tile's cells are outlined and measured together, in one mosaic
    (:mod:`~cellseg_d2.inference.crop_mosaic`): a handful of whole-image calls per tile
    instead of a dozen small calls per cell.

    Args:
        tile: the tile the detections were predicted on.
        detections: the predictor's output for the tile (model pixels, tile origin).
        image: the BGR tile the model saw (for the mean intensities), whole or as the
            :class:`CellPixels` under the detections.

    Returns:
        The detections whose box centre lies in the tile's core, as :class:`SlideCell`.
    """
    sx, sy = tile.level0_per_model_pixel
    owned = owned_detections(tile, detections)
    if not owned:
        return []
    if isinstance(image, CellPixels):
        image = image.image()
    mosaic = pack_crops([det.mask for det, _ in owned])
    positions = np.array([(det.top, det.left) for det, _ in owned], np.int64)
    outlines = mosaic_polygons(mosaic, positions[:, ::-1])
    measures = measure_mosaic(mosaic, image[:, :, ::-1], positions)
    cells = []
    for (det, box), pieces, props in zip(owned, outlines, measures, strict=True):
        geometry = _geometry(tile, pieces)
        if geometry is None:
            continue
        cells.append(
            SlideCell(
                tile=tile.index,
                category=int(det.category),
                score=float(det.score),
                box=box,
                area=float(props.area) * sx * sy,
                # pixel-index centroid -> pixel centre (+0.5) -> level-0 (QuPath's frame)
                centroid_x=tile.x + (det.left + props.centroid_col + 0.5) * sx,
                centroid_y=tile.y + (det.top + props.centroid_row + 0.5) * sy,
                perimeter=props.perimeter * math.sqrt(sx * sy),
                eccentricity=props.eccentricity,
                solidity=props.solidity,
                mean_rgb=props.mean_rgb,
                geometry=geometry,
            )
        )
    return cells


def drop_seam_duplicates(cells: Sequence[SlideCell], tiles: Sequence[SlideTile]) -> list[SlideCell]:
    """Remove cells kept twice by neighbouring tiles (the safety net of ownership).

    Greedy by score like the image tiling merge: the best remaining cell stays and removes its
    best-matching copy (box IoU above ``TILE_MERGE_IOU``, any class) from each other tile.
    Cells of one tile are never compared (the model's own NMS decided there), nor cells whose
    boxes do not reach into the overlap of two windows.

    Args:
        cells: the owned cells of some tiles.
        tiles: those tiles (every ``cell.tile`` among their indices).

    Returns:
        The surviving cells in their input order (deterministic ids downstream).
    """
    if len(cells) < 2:
        return list(cells)
    position = {tile.index: i for i, tile in enumerate(tiles)}
    tile_of = [position[cell.tile] for cell in cells]
    # tile_overlap_matches reads only ``.box``; SlideCell's is a level-0 float box.
    matches = tile_overlap_matches(cells, tile_of, [tile.window for tile in tiles])  # type: ignore[arg-type]
    if not matches:
        return list(cells)
    survivors = greedy_tile_survivors([cell.score for cell in cells], tile_of, matches)
    return [cells[i] for i in sorted(survivors)]
