"""A whole slide's label images: a tiled, pyramidal OME-TIFF rasterised tile by tile from its store.

A slide's label canvas does not fit in memory (a 100,000 px square slide is 40 GB of uint32), so
it is never made: each tile of each pyramid level is painted from the polygons of the cells the
store's R-tree returns for that tile, handed to ``tifffile`` (which compresses and writes it) and
dropped before the next one. Memory is one tile and one cell, whatever the slide's size.

What the file holds (the conventions of the image ``labels`` export of
:mod:`~cellseg_d2.inference.export`, with the store's ids):

- channel 0 ``cell_id``: uint32, the store's ``cell_id`` of the cell covering each pixel, 0 for
  background; so a label pixel finds its row of ``<stem>.cells.csv`` and its feature of
  ``<stem>.geojson`` (measurement ``cell_id``).
- channel 1 ``class_id``: the cell's 1-based class (``category + 1``), 0 for background, as
  ``<stem>_classes.tif`` of an image.

Why two channels of one file rather than the image export's two files: a slide's outputs are
one file per kind (store, GeoJSON, table), the two images share one pyramid and one set of OME
metadata, and a viewer opening the file gets both aligned by construction. OME-TIFF has one
pixel type per image, so the classes are uint32 as well; zlib makes their long runs nearly free.

Pixels are QuPath's (:mod:`~cellseg_d2.inference.outlines`): pixel ``(row, col)`` of level 0
covers ``[col, col + 1) x [row, row + 1)`` of the store's level-0 frame and belongs to a cell when
its centre lies inside the cell's polygon (holes excluded). Polygons whose vertices lie on pixel
edges therefore give back exactly the pixels they were made from. Level ``k`` (each level half
the previous, rounded up, until one tile holds it) is the nearest-neighbour subsample of level
0: its pixel ``(r, c)`` is level-0 pixel ``(r * 2**k + 2**k // 2, c * 2**k + 2**k // 2)``, the
centre of the block it stands for (ids must never be averaged). Each level is painted from the
polygons directly, never from another level, so no level waits in memory for the next.

Overlaps: a pixel goes to the first cell, in ``cell_id`` order, that covers it; later cells
never overwrite. Why not the image export's "higher score wins": there ids follow the score, so
both rules agree; here ids follow the tile plan and painting in score order would need every cell
of a tile sorted first, which at the coarsest level is every cell of the slide. Seam duplicates
were already resolved by score when the cells were stored
(:func:`~cellseg_d2.inference.slide_stitch.drop_seam_duplicates`), so overlaps left are the
model's own slight ones.

The image is the slide as the store saw it (level-0 pixels, the settings' ``offset`` not
added: prediction sets it to (0, 0), so the image lies exactly on the slide in QuPath).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from skimage import draw

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.utils.files import atomic_write

__all__ = [
    "LABEL_CHANNELS",
    "LABEL_COMPRESSION",
    "LABEL_TILE_SIZE",
    "SLIDE_LABELS_SUFFIX",
    "label_level_shapes",
    "write_slide_labels",
]

#: The labels of slide ``<stem>`` are ``<stem>.labels.ome.tif``.
SLIDE_LABELS_SUFFIX = ".labels.ome.tif"
#: Tile side of every level (QuPath's and Bio-Formats' usual 512).
LABEL_TILE_SIZE = 512
#: Channel names, in order (OME ``Channel Name``).
LABEL_CHANNELS = ("cell_id", "class_id")
#: Deflate: read by every TIFF reader (Bio-Formats, QuPath, Fiji, napari via tifffile) and
#: written by tifffile with Python's own zlib, where LZW needs imagecodecs; on label runs it
#: compresses at least as well as LZW.
LABEL_COMPRESSION = "zlib"

_MAX_LABEL = np.iinfo(np.uint32).max
#: Level-0 px a polygon may pass its box by (vertices are stored to 4 decimals).
_SLACK = 1e-3


def label_level_shapes(width: int, height: int, tile_size: int) -> list[tuple[int, int]]:
    """``(height, width)`` of each pyramid level: level 0, then each half the previous
    (rounded up) until one tile holds it.

    Why rounded up: level ``k`` then has a pixel for every ``2**k`` block of level 0, the last
    one partial, so no edge of the slide is lost at any level.
    """
    if width < 1 or height < 1 or tile_size < 1:
        raise ValueError(f"label image {width}x{height} with tiles of {tile_size}")
    shapes = [(height, width)]
    while max(shapes[-1]) > tile_size:
        rows, cols = shapes[-1]
        shapes.append(((rows + 1) // 2, (cols + 1) // 2))
    return shapes


def _samples(start: float, stop: float, level: int, first: int, last: int) -> tuple[int, int]:
    """The level pixels ``[a, b)`` among ``first .. last - 1`` whose sample points (level-0
    ``c * 2**k + 2**k // 2 + 0.5``) lie strictly inside the level-0 span ``(start, stop)``."""
    step, shift = 2**level, 2**level // 2 + 0.5
    # widened by far less than a pixel: stored vertices are rounded, boxes are not
    low = math.floor((start - _SLACK - shift) / step) + 1
    high = math.ceil((stop + _SLACK - shift) / step)
    return max(low, first), min(high, last)


def _pieces(geometry: str) -> list[list[list[list[float]]]]:
    """The polygons (``[outer, *holes]``) of a stored GeoJSON Polygon or MultiPolygon."""
    parsed = json.loads(geometry)
    coordinates = parsed["coordinates"]
    return [coordinates] if parsed["type"] == "Polygon" else coordinates


def _cell_mask(pieces: list, level: int, top: int, left: int, shape: tuple[int, int]) -> np.ndarray:
    """Which pixels of a level window (``shape`` at ``(top, left)``) have their sample point
    inside the cell: inside an outer ring and outside that piece's holes (a ring after the
    first is a hole), any piece.

    ``skimage.draw.polygon`` takes pixel ``(r, c)`` as the point ``(r, c)``, so the polygon is
    mapped to the window's sample grid: level-0 ``x`` to ``(x - 2**k // 2 - 0.5) / 2**k - left``.
    Vertices on level-0 pixel edges never fall on a sample point (it is a level-0 pixel
    centre), so no point is on an edge and no tie rule of the rasteriser matters.
    """
    step, shift = 2**level, 2**level // 2 + 0.5
    mask = np.zeros(shape, bool)
    for rings in pieces:
        # most cells are one ring: painted straight into the mask, no piece of their own
        piece = mask if len(rings) == 1 else np.zeros(shape, bool)
        for index, ring in enumerate(rings):
            xy = np.array(ring, np.float64)
            rr, cc = draw.polygon(
                (xy[:, 1] - shift) / step - top, (xy[:, 0] - shift) / step - left, shape
            )
            piece[rr, cc] = index == 0
        if piece is not mask:
            mask |= piece
    return mask


def _paint_tile(
    store: CellStore, level: int, rows: tuple[int, int], cols: tuple[int, int], channel: int
) -> np.ndarray:
    """One tile of one level and channel (``rows``/``cols``: its level pixel ranges), painted
    cell by cell in ``cell_id`` order into pixels no earlier cell holds."""
    (r0, r1), (c0, c1) = rows, cols
    tile = np.zeros((r1 - r0, c1 - c0), np.uint32)
    step, shift = 2**level, 2**level // 2
    # the level-0 span of the tile's sample points, widened by half a pixel on each side
    x0, y0 = c0 * step + shift, r0 * step + shift
    x1, y1 = (c1 - 1) * step + shift + 1, (r1 - 1) * step + shift + 1
    for cell in store.cells_in(x0, y0, x1, y1):
        a, b = _samples(cell.x0, cell.x1, level, c0, c1)
        top, bottom = _samples(cell.y0, cell.y1, level, r0, r1)
        if a >= b or top >= bottom:
            continue  # too small to hold a sample point of this level: never parsed
        mask = _cell_mask(_pieces(cell.geometry), level, top, a, (bottom - top, b - a))
        window = tile[top - r0 : bottom - r0, a - c0 : b - c0]
        value = cell.cell_id if channel == 0 else cell.category + 1
        window[mask & (window == 0)] = value
    return tile


def _level_tiles(
    store: CellStore, level: int, shape: tuple[int, int], tile_size: int
) -> Iterator[np.ndarray]:
    """Every tile of one level, channel by channel, row by row: tifffile's order for a
    ``(channel, y, x)`` series. Edge tiles are smaller; tifffile pads them with zeros."""
    height, width = shape
    for channel in range(len(LABEL_CHANNELS)):
        for r0 in range(0, height, tile_size):
            for c0 in range(0, width, tile_size):
                rows = (r0, min(r0 + tile_size, height))
                cols = (c0, min(c0 + tile_size, width))
                yield _paint_tile(store, level, rows, cols, channel)


def _canvas_size(store: CellStore, width: int | None, height: int | None) -> tuple[int, int]:
    """The level-0 size: given, else the store's settings (``width``, ``height``)."""
    settings = store.settings
    width = settings.get("width") if width is None else width
    height = settings.get("height") if height is None else height
    if not width or not height:
        raise CellDataError(
            f"{store.path}: the store does not record the slide's width and height; give them"
        )
    return int(width), int(height)


def write_slide_labels(
    store: CellStore,
    path: str | os.PathLike,
    *,
    width: int | None = None,
    height: int | None = None,
    tile_size: int = LABEL_TILE_SIZE,
) -> Path:
    """Write a store's cells as a tiled, pyramidal, compressed OME-TIFF of labels, atomically.

    Why an OME-TIFF pyramid: QuPath, Fiji (Bio-Formats) and napari open it at any zoom without
    reading it whole; why tile by tile: the canvas of a slide does not fit in memory (see the
    module notes for the channels, the pixel rule, the levels and overlaps). BigTIFF, because
    the file may pass 4 GB. ``PhysicalSizeX``/``Y`` (µm) go into the OME metadata when the
    store knows the slide's pixel size, and each level's resolution tags say its own (``2**k``
    times larger), so viewers measure in µm at every level.

    The file is written beside ``path`` under a temporary name and renamed
    (:func:`~cellseg_d2.utils.files.atomic_write`): a reader sees the old file or the new one.

    Args:
        store: a finished (or open) cell store.
        path: the file to write (``<stem>.labels.ome.tif``).
        width, height: level-0 size; default: the store's settings (prediction records them).
        tile_size: tile side at every level (a multiple of 16, as TIFF requires).

    Returns:
        ``path``.

    Raises:
        CellDataError: the size is unknown, or more cells than uint32 labels.
        ValueError: a bad tile size.
    """
    path = Path(path)
    width, height = _canvas_size(store, width, height)
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size {tile_size}: TIFF tiles are a multiple of 16")
    if len(store) > _MAX_LABEL:
        raise CellDataError(f"{store.path}: {len(store)} cells do not fit uint32 labels")
    shapes = label_level_shapes(width, height, tile_size)
    pixel_size = store.settings.get("pixel_size_um")
    metadata: dict = {"axes": "CYX", "Channel": {"Name": list(LABEL_CHANNELS)}}
    if pixel_size:
        for axis in "XY":
            metadata[f"PhysicalSize{axis}"] = float(pixel_size)
            metadata[f"PhysicalSize{axis}Unit"] = "µm"
    options = {
        "tile": (tile_size, tile_size),
        "dtype": np.uint32,
        "photometric": "minisblack",
        "compression": LABEL_COMPRESSION,
        "maxworkers": 1,  # one tile in flight: tifffile's threads would buffer many
    }
    with atomic_write(path) as handle:
        # NOTE: the temporary file's handle has an int name, which tifffile cannot split;
        # naming it keeps OME mode on despite the temporary ``.tmp`` suffix.
        target = tifffile.FileHandle(handle, name=path.name)
        with tifffile.TiffWriter(target, bigtiff=True, ome=True) as tif:
            for level, shape in enumerate(shapes):
                level_options = dict(options)
                if pixel_size:
                    per_cm = 1e4 / (float(pixel_size) * 2**level)
                    level_options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
                if level == 0:
                    level_options.update(subifds=len(shapes) - 1, metadata=metadata)
                else:
                    level_options.update(subfiletype=1, metadata=None)
                tif.write(
                    _level_tiles(store, level, shape, tile_size),
                    shape=(len(LABEL_CHANNELS), *shape),
                    **level_options,
                )
    return path
