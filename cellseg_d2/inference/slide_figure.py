"""A figure of a slide region with its predicted cells outlined, from the slide and its store.

Why from the store: a slide's cells are in its SQLite store (:mod:`~cellseg_d2.inference
.cell_store`), whose R-tree gives the cells of a region without reading the others, so a figure
of any region of a slide with millions of cells costs the region's cells only. The outlines are
the stored GeoJSON geometries (level-0 pixels, vertices on pixel edges), drawn in the class
colours of every other export (:func:`~cellseg_d2.utils.layout.class_color`) over the pixels the
slide reader gives for the region, so the figure shows what QuPath would show.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

from cellseg_d2.data.slide import open_slide
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.utils.layout import class_color

__all__ = ["MAX_REGION_PIXELS", "render_slide_region"]

#: Largest region read at level 0 for one figure (a figure, not a whole-slide export).
MAX_REGION_PIXELS = 8192 * 8192


def _rings(geometry: dict) -> list[list[list[float]]]:
    """Every ring (outer and holes) of a GeoJSON Polygon or MultiPolygon."""
    if geometry.get("type") == "Polygon":
        return list(geometry["coordinates"])
    return [ring for polygon in geometry.get("coordinates", []) for ring in polygon]


def render_slide_region(
    slide: str | os.PathLike,
    store: str | os.PathLike,
    region: tuple[int, int, int, int],
    downsample: float = 1.0,
    thickness: int = 1,
) -> tuple[np.ndarray, int]:
    """The region's pixels with the outline of every stored cell touching it.

    Args:
        slide: the slide file the store was predicted from.
        store: its finished ``<stem>.cells.sqlite``.
        region: ``(x, y, width, height)`` in level-0 pixels of the slide.
        downsample: level-0 pixels per figure pixel (>= 1 shrinks the figure).
        thickness: outline width in figure pixels.

    Returns:
        ``(RGB uint8 figure, cells drawn)``.

    Raises:
        CellDataError: a region outside the slide or too large, a bad downsample, or a store
            of another slide.
    """
    x, y, width, height = (int(v) for v in region)
    if width < 1 or height < 1 or width * height > MAX_REGION_PIXELS:
        raise CellDataError(
            f"region {width}x{height}: give 1 to {MAX_REGION_PIXELS} pixels (a figure)"
        )
    if not downsample >= 1.0:
        raise CellDataError(f"downsample {downsample}: give 1 or more")
    with CellStore.open(store) as cells, open_slide(slide) as reader:
        info = reader.info
        if cells.settings.get("width") != info.width or cells.settings.get("height") != info.height:
            raise CellDataError(f"{store}: its cells are not of {slide} (another size)")
        if x < 0 or y < 0 or x + width > info.width or y + height > info.height:
            raise CellDataError(
                f"region {x},{y},{width},{height} lies outside {slide} ({info.width}x{info.height})"
            )
        pixels = reader.read_region(x, y, 0, width, height)
        size = (max(1, round(width / downsample)), max(1, round(height / downsample)))
        figure = np.ascontiguousarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))
        drawn = 0
        for cell in cells.cells_in(x, y, x + width, y + height):
            color = tuple(int(c) for c in class_color(cell.category))
            for ring in _rings(json.loads(cell.geometry)):
                points = (np.asarray(ring, np.float64) - (x, y)) / downsample
                cv2.polylines(figure, [np.round(points).astype(np.int32)], True, color, thickness)
            drawn += 1
    return figure, drawn
