"""QuPath GeoJSON and the per-cell CSV of a slide, streamed from its cell store.

A slide's cells do not fit in memory as Python objects, so both writers read the store in
``cell_id`` order a batch at a time and write feature by feature (row by row) into one
:func:`~cellseg_d2.utils.files.atomic_write` file: a reader sees the old file or the complete
new one. Both carry the store's ``cell_id``, so a cell picked in QuPath is found in the table.

Coordinates are level-0 pixels of the slide plus the settings' ``offset``; prediction sets it to
(0, 0) because QuPath's OpenSlide server crops to the slide's bounds as our reader does (the
bounds' corner is recorded as ``bounds_offset``, add it for OpenSlide's full-slide frame). The
formats follow the per-image exports of :mod:`~cellseg_d2.inference.export`: a
``FeatureCollection`` of ``detection`` objects with ``classification {name, color}`` from the
project palette, vertices on pixel edges; the table keeps the image table's columns that make
sense for a slide (:data:`SLIDE_CSV_COLUMNS`), measured on each cell's own mask. The label
image, only when asked, comes from :mod:`~cellseg_d2.inference.slide_labels`
(:func:`write_slide_outputs` writes whichever formats a run chose).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cellseg_d2.inference.cell_store import CellStore, StoredCell
from cellseg_d2.inference.export import CSV_COLUMNS, GEOJSON_OBJECT_TYPE, spreadsheet_safe
from cellseg_d2.inference.slide_labels import write_slide_labels
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import class_color, class_name

__all__ = [
    "DEFAULT_SLIDE_FORMATS",
    "SLIDE_CSV_COLUMNS",
    "SLIDE_FORMATS",
    "write_slide_csv",
    "write_slide_geojson",
    "write_slide_outputs",
]

#: The slide outputs a run may ask for besides the store itself (``labels``: the
#: ``<stem>.labels.ome.tif`` pyramid of :mod:`~cellseg_d2.inference.slide_labels`).
SLIDE_FORMATS = ("geojson", "csv", "labels")
#: What a slide gets unless told otherwise: a label pyramid is large and slow, so only on request.
DEFAULT_SLIDE_FORMATS = ("geojson", "csv")
#: The per-cell table of a slide: the image table's columns (``image`` holds the slide's file
#: name, ``cell_id`` the store's id) less ``image_id`` and ``cells`` (a slide's table always holds
#: its store's cells), plus ``area_um2`` after ``area_px`` (empty when the pixel
#: size is unknown). Level-0 pixels plus offset; centroids with pixel centres at +0.5 (QuPath's
#: convention).
SLIDE_CSV_COLUMNS = tuple(
    column
    for name in CSV_COLUMNS
    if name not in ("image_id", "cells")
    for column in ((name, "area_um2") if name == "area_px" else (name,))
)


def _number(value: float) -> str:
    """A coordinate or measurement as short text, exact for slide-sized integers."""
    return str(int(value)) if float(value).is_integer() else f"{value:.10g}"


def _shift(coordinates: list, dx: float, dy: float) -> list:
    """GeoJSON coordinates (any nesting) moved by ``(dx, dy)``."""
    if coordinates and isinstance(coordinates[0], (int, float)):
        return [coordinates[0] + dx, coordinates[1] + dy]
    return [_shift(item, dx, dy) for item in coordinates]


def _pixel_area_um2(store: CellStore) -> float | None:
    """µm² per level-0 pixel, None when the slide's pixel size is unknown."""
    size = store.settings.get("pixel_size_um")
    return float(size) ** 2 if size else None


def _feature(
    cell: StoredCell,
    class_names: Sequence[str],
    offset: tuple[float, float],
    pixel_area: float | None,
) -> str:
    """One cell as a compact GeoJSON Feature text (geometry moved by the offset)."""
    if offset == (0, 0):
        geometry = cell.geometry  # already compact JSON in the store: no re-encoding
    else:
        parsed = json.loads(cell.geometry)
        parsed["coordinates"] = _shift(parsed["coordinates"], *offset)
        geometry = json.dumps(parsed, separators=(",", ":"))
    measurements = {"cell_id": cell.cell_id, "score": cell.score, "area_px": cell.area}
    if pixel_area is not None:
        measurements["area_um2"] = cell.area * pixel_area
    properties = {
        "objectType": GEOJSON_OBJECT_TYPE,
        "classification": {
            "name": class_name(cell.category, class_names),
            "color": list(class_color(cell.category)),
        },
        "measurements": measurements,
    }
    # No Feature "id": QuPath reads it as an object UUID; the cell id is a measurement instead.
    return (
        f'{{"type":"Feature","geometry":{geometry},'
        f'"properties":{json.dumps(properties, separators=(",", ":"), allow_nan=False)}}}'
    )


def write_slide_geojson(
    store: CellStore, path: str | os.PathLike, class_names: Sequence[str]
) -> int:
    """Write the store as a QuPath GeoJSON FeatureCollection, streaming, atomically.

    Why one ``detection`` per cell with ``cell_id`` in its measurements: QuPath imports
    detections as light objects (millions stay responsive) and shows measurements in its
    tables, so a cell can be matched with the CSV row of the same id. ``area_px`` is in
    level-0 pixels; ``area_um2`` is added when the slide's pixel size is known.

    Args:
        store: a finished (or open) cell store.
        path: the ``.geojson`` file to write.
        class_names: names of the 0-based classes (beyond them: ``classK``).

    Returns:
        The number of features written.
    """
    dx, dy = store.settings.get("offset", (0, 0))
    pixel_area = _pixel_area_um2(store)
    count = 0
    with atomic_write(Path(path), "w") as handle:
        handle.write('{"type":"FeatureCollection","features":[')
        for cell in store.iter_cells():
            handle.write(("," if count else "") + "\n")
            handle.write(_feature(cell, class_names, (dx, dy), pixel_area))
            count += 1
        handle.write("\n]}\n")
    return count


def write_slide_csv(
    store: CellStore, path: str | os.PathLike, class_names: Sequence[str], slide_name: str
) -> int:
    """Write the per-cell table of a slide (:data:`SLIDE_CSV_COLUMNS`), streaming, atomically.

    Text cells pass :func:`~cellseg_d2.inference.export.spreadsheet_safe` (no live formulas
    from file or class names). ``class_id`` is 1-based (``classK``), as in the image table.

    Args:
        store: a finished (or open) cell store.
        path: the ``.csv`` file to write.
        class_names: names of the 0-based classes.
        slide_name: what the ``image`` column holds (the slide's file name).

    Returns:
        The number of rows written (header not counted).
    """
    dx, dy = store.settings.get("offset", (0, 0))
    pixel_area = _pixel_area_um2(store)
    image = spreadsheet_safe(slide_name)
    count = 0
    with atomic_write(Path(path), "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SLIDE_CSV_COLUMNS)
        for cell in store.iter_cells():
            writer.writerow(
                [
                    image,
                    cell.cell_id,
                    cell.category + 1,
                    spreadsheet_safe(class_name(cell.category, class_names)),
                    f"{cell.score:.6g}",
                    _number(cell.area),
                    "" if pixel_area is None else f"{cell.area * pixel_area:.6g}",
                    _number(cell.centroid_x + dx),
                    _number(cell.centroid_y + dy),
                    _number(cell.x0 + dx),
                    _number(cell.y0 + dy),
                    _number(cell.x1 + dx),
                    _number(cell.y1 + dy),
                    f"{cell.perimeter:.6g}",
                    f"{cell.eccentricity:.6g}",
                    f"{cell.solidity:.6g}",
                    f"{cell.mean_r:.6g}",
                    f"{cell.mean_g:.6g}",
                    f"{cell.mean_b:.6g}",
                ]
            )
            count += 1
    return count


def write_slide_outputs(
    store: CellStore,
    paths: Mapping[str, Path],
    formats: Sequence[str],
    class_names: Sequence[str],
    slide_name: str,
) -> dict[str, Path]:
    """Write the chosen :data:`SLIDE_FORMATS` of one slide from its store, in that order.

    Why one place: a fresh run and a resumed one of a finished store write the same files the
    same way, and the cheap text files come before the label pyramid (the slowest).

    Args:
        store: the slide's finished store.
        paths: ``{format: path}`` (``slide_output_paths`` of ``slide_predict``).
        formats: which of :data:`SLIDE_FORMATS` to write.
        class_names: names of the 0-based classes.
        slide_name: the slide's file name (the table's ``image`` column).

    Returns:
        ``{format: path}`` of the files written.
    """
    written = {}
    if "geojson" in formats:
        write_slide_geojson(store, paths["geojson"], class_names)
        written["geojson"] = paths["geojson"]
    if "csv" in formats:
        write_slide_csv(store, paths["csv"], class_names, slide_name)
        written["csv"] = paths["csv"]
    if "labels" in formats:
        written["labels"] = write_slide_labels(store, paths["labels"])
    return written
