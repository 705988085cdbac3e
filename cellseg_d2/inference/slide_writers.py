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

import contextlib
import csv
import json
import math
import os
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from cellseg_d2.inference.cell_store import CellStore, StoredCell
from cellseg_d2.inference.export import CSV_COLUMNS, GEOJSON_OBJECT_TYPE, spreadsheet_safe
from cellseg_d2.inference.slide_labels import write_slide_labels
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import class_color, class_name

__all__ = [
    "DEFAULT_SLIDE_FORMATS",
    "SLIDE_CSV_COLUMNS",
    "SLIDE_FORMATS",
    "TEXT_FORMATS",
    "SlideTextWriter",
    "write_slide_csv",
    "write_slide_geojson",
    "slide_text_writer",
    "write_slide_outputs",
    "write_slide_text",
]

#: The slide outputs a run may ask for besides the store itself (``labels``: the
#: ``<stem>.labels.ome.tif`` pyramid of :mod:`~cellseg_d2.inference.slide_labels`).
SLIDE_FORMATS = ("geojson", "csv", "labels")
#: What a slide gets unless told otherwise: a label pyramid is large and slow, so only on request.
DEFAULT_SLIDE_FORMATS = ("geojson", "csv")
#: The formats :func:`slide_text_writer` writes (and the slide loop can stream).
TEXT_FORMATS = ("geojson", "csv")
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


class _FeatureText:
    """Formats cells as compact GeoJSON Feature texts, the same bytes ``json.dumps`` gives.

    Why not ``json.dumps`` per cell: a slide has hundreds of thousands of cells, and encoding
    each one's properties dict took half the writing time. The part that depends only on the
    class (object type, name, colour) is encoded once per class; the measurements are numbers,
    written as ``json`` writes them (``repr`` of a float, ``str`` of an int, never NaN).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        offset: tuple[float, float],
        pixel_area: float | None,
    ) -> None:
        self.class_names = class_names
        self.offset = offset
        self.pixel_area = pixel_area
        self._heads: dict[int, str] = {}

    def _head(self, category: int) -> str:
        """``"properties":{...,"measurements":{`` of a class, encoded once."""
        if category not in self._heads:
            properties = {
                "objectType": GEOJSON_OBJECT_TYPE,
                "classification": {
                    "name": class_name(category, self.class_names),
                    "color": list(class_color(category)),
                },
                "measurements": {},
            }
            text = json.dumps(properties, separators=(",", ":"), allow_nan=False)
            self._heads[category] = '"properties":' + text[: -len("{}}")] + "{"
        return self._heads[category]

    def __call__(self, cell: StoredCell) -> str:
        """One cell as a Feature text (geometry moved by the offset)."""
        if self.offset == (0, 0):
            geometry = cell.geometry  # already compact JSON in the store: no re-encoding
        else:
            parsed = json.loads(cell.geometry)
            parsed["coordinates"] = _shift(parsed["coordinates"], *self.offset)
            geometry = json.dumps(parsed, separators=(",", ":"))
        values = [cell.score, cell.area]
        if self.pixel_area is not None:
            values.append(cell.area * self.pixel_area)
        if not all(map(math.isfinite, values)):
            raise ValueError(f"cell {cell.cell_id}: a measurement is not a finite number")
        numbers = f'"cell_id":{int(cell.cell_id)},"score":{float(values[0])!r}'
        numbers += f',"area_px":{float(values[1])!r}'
        if self.pixel_area is not None:
            numbers += f',"area_um2":{float(values[2])!r}'
        # No Feature "id": QuPath reads it as an object UUID; the cell id is a measurement.
        return (
            f'{{"type":"Feature","geometry":{geometry},'
            f"{self._head(int(cell.category))}{numbers}}}}}}}"
        )


def _csv_row(
    cell: StoredCell,
    image: str,
    class_names: Sequence[str],
    offset: tuple[float, float],
    pixel_area: float | None,
) -> list:
    """One cell as a row of :data:`SLIDE_CSV_COLUMNS` (``image``: the safe slide name)."""
    dx, dy = offset
    return [
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


class SlideTextWriter:
    """Appends cells to a slide's open GeoJSON and/or CSV (see :func:`slide_text_writer`).

    Attributes:
        count: cells written so far; ``last_id`` the ``cell_id`` of the last one (0: none).
    """

    def __init__(
        self,
        store: CellStore,
        geojson: TextIO | None,
        table: Any | None,
        class_names: Sequence[str],
        slide_name: str = "",
    ) -> None:
        """Write to the open ``geojson`` file (its header written) and ``table`` (a
        ``csv.writer``, its header written); either may be None."""
        self._geo = geojson
        self._table = table
        self._class_names = class_names
        self._offset = tuple(store.settings.get("offset", (0, 0)))
        self._pixel_area = _pixel_area_um2(store)
        self._image = spreadsheet_safe(slide_name)
        self._feature = _FeatureText(class_names, self._offset, self._pixel_area)
        self.count = 0
        self.last_id = 0

    def write(self, cells: Iterable[StoredCell]) -> None:
        """Append cells (in ``cell_id`` order, after the ones written)."""
        for cell in cells:
            if self._geo is not None:
                self._geo.write(("," if self.count else "") + "\n" + self._feature(cell))
            if self._table is not None:
                self._table.writerow(
                    _csv_row(cell, self._image, self._class_names, self._offset, self._pixel_area)
                )
            self.count += 1
            self.last_id = cell.cell_id


@contextlib.contextmanager
def slide_text_writer(
    store: CellStore,
    geojson: str | os.PathLike | None,
    csv_path: str | os.PathLike | None,
    class_names: Sequence[str],
    slide_name: str = "",
) -> Iterator[SlideTextWriter]:
    """A slide's GeoJSON and/or per-cell CSV, written as its cells come, published atomically.

    Why streaming: the slide loop hands each stored chunk's cells to the writer, so the files
    grow while the model works instead of being written in one pass after the last tile (4-7 s
    for 300,000 cells here, with nothing else to do). The files appear, complete, only when
    the block ends without an error (:func:`~cellseg_d2.utils.files.atomic_write`); a stopped
    run leaves none, and its resumed run writes the stored cells first.

    The GeoJSON is a QuPath FeatureCollection, one ``detection`` per cell with ``cell_id`` in
    its measurements (QuPath imports detections as light objects, so millions stay responsive,
    and shows measurements in its tables: a cell is matched with the CSV row of the same id).
    ``area_px`` is in level-0 pixels; ``area_um2`` is added when the slide's pixel size is
    known. The CSV (:data:`SLIDE_CSV_COLUMNS`) passes its text cells through
    :func:`~cellseg_d2.inference.export.spreadsheet_safe` (no live formulas from file or class
    names); ``class_id`` is 1-based (``classK``), as in the image table.

    Args:
        store: the slide's store (its settings give the offset and pixel size).
        geojson, csv_path: the files to write, or None (not written).
        class_names: names of the 0-based classes (beyond them: ``classK``).
        slide_name: what the CSV's ``image`` column holds (the slide's file name).
    """
    with contextlib.ExitStack() as files:
        geo, table = None, None
        if geojson is not None:
            geo = files.enter_context(atomic_write(Path(geojson), "w"))
            geo.write('{"type":"FeatureCollection","features":[')
        if csv_path is not None:
            handle = files.enter_context(atomic_write(Path(csv_path), "w"))
            table = csv.writer(handle, lineterminator="\n")
            table.writerow(SLIDE_CSV_COLUMNS)
        yield SlideTextWriter(store, geo, table, class_names, slide_name)
        if geo is not None:
            geo.write("\n]}\n")


def write_slide_text(
    store: CellStore,
    paths: Mapping[str, str | os.PathLike],
    class_names: Sequence[str],
    slide_name: str = "",
) -> int:
    """Write the store's :data:`TEXT_FORMATS` named in ``paths`` (``{format: path}``) in one
    pass over its cells, atomically (:func:`slide_text_writer`).

    Why one pass: reading a slide's cells back from SQLite costs as much as formatting one of
    the files; both files are made from the same rows.

    Returns:
        The number of cells written (to each file).
    """
    geojson, csv_path = paths.get("geojson"), paths.get("csv")
    with slide_text_writer(store, geojson, csv_path, class_names, slide_name) as text:
        text.write(store.iter_cells())
    return text.count


def write_slide_geojson(
    store: CellStore, path: str | os.PathLike, class_names: Sequence[str]
) -> int:
    """Write the store as a QuPath GeoJSON FeatureCollection (:func:`write_slide_text`).

    Returns:
        The number of features written.
    """
    return write_slide_text(store, {"geojson": path}, class_names)


def write_slide_csv(
    store: CellStore, path: str | os.PathLike, class_names: Sequence[str], slide_name: str
) -> int:
    """Write the per-cell table of a slide (:data:`SLIDE_CSV_COLUMNS`, :func:`write_slide_text`).

    Returns:
        The number of rows written (header not counted).
    """
    return write_slide_text(store, {"csv": path}, class_names, slide_name)


def write_slide_outputs(
    store: CellStore,
    paths: Mapping[str, Path],
    formats: Sequence[str],
    class_names: Sequence[str],
    slide_name: str,
    streamed: Collection[str] = (),
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
        streamed: formats already written while predicting (:func:`slide_text_writer`): not
            written again, still returned.

    Returns:
        ``{format: path}`` of the slide's files.
    """
    written = {name: paths[name] for name in TEXT_FORMATS if name in formats}
    todo = {name: path for name, path in written.items() if name not in streamed}
    if todo:
        write_slide_text(store, todo, class_names, slide_name)
    if "labels" in formats:
        written["labels"] = write_slide_labels(store, paths["labels"])
    return written
