"""Per-image exports beyond the COCO submission: label images, QuPath GeoJSON, per-cell tables.

People who segment cells for a living open results in napari, Fiji, Cellpose or QuPath and
measure cells in tables; those tools speak label images and GeoJSON, not COCO RLE. Each writer
here takes one image's :class:`~cellseg_d2.inference.detections.Detection` list (tight mask crops)
and writes its file atomically, so a prediction run can stream folder after folder without ever
holding more than one image's results.

Formats (``tools/predict.py --format``):

- ``labels``: ``<stem>_instances.tif``, an instance label image (uint16, uint32 above 65535
  cells; 0 background) and ``<stem>_classes.tif`` beside it (the 1-based class of every pixel).
  Label images cannot overlap: where detections overlap the higher score wins.
- ``geojson``: ``<stem>.geojson``, a QuPath FeatureCollection, one ``detection`` per cell: a
  ``Polygon`` or ``MultiPolygon`` with holes, ``classification`` ``{name, color}`` and the
  measurements ``cell_id``, ``score`` and ``area_px``.
- ``csv``: one row per cell (:data:`CSV_COLUMNS`), measured as ``skimage.measure.regionprops``
  does (:func:`~cellseg_d2.inference.measure.measure_mosaic`).

One cell, one id: the label image decides which cells there are. Detections are painted by
descending score, each into the pixels no better one holds, and a detection left without a
pixel is dropped; the cells left are numbered 1..n in that order, and cell K is label K of
``<stem>_instances.tif``, the GeoJSON feature with ``"id": K`` and measurement ``cell_id`` K, and
the table row with ``cell_id`` K. The GeoJSON outline and the table row of a cell are made from
the pixels it holds in the label image, so the three files hold the same cells with the same
pixels. With ``keep_overlaps`` (``--keep-overlaps``) every detection is written instead, each
with its own mask: cell K is then the K-th detection by score, and the label image keeps the
same ids (the ids of detections hidden entirely by better ones are missing from it).

Each file says which it holds: the GeoJSON in a top-level ``"properties": {"cells": ...}``
(GeoJSON allows members beyond the standard; QuPath reads only ``features``) and the table in
its last column ``cells``, both :data:`CELLS_LABEL_IMAGE` or :data:`CELLS_ALL_DETECTIONS`. (A
column, not a ``#`` comment line: spreadsheets and ``pandas.read_csv`` read it as it is.)

One coordinate convention, QuPath's: pixel ``(row, col)`` covers ``[col, col + 1) x
[row, row + 1)``, so the centre of pixel (0, 0) is at (0.5, 0.5). Polygons run along the pixel
edges (:mod:`~cellseg_d2.inference.outlines`); the table's centroid is the mean of the pixel
centres, equal to the polygon's centroid; its bounding box ``bbox_x0 .. bbox_x1`` spans pixel
corners (exclusive end); areas are pixel counts in both files (``area_px``), equal to the
polygon's area.

QuPath's feature ``id`` must be a UUID for QuPath to keep it (from v0.4 on, its reader ignores
any other id with a debug message and gives the object a new UUID): the ``id`` is there for
GeoJSON readers such as GeoPandas, and ``cell_id`` is repeated as a measurement, which QuPath
keeps, shows in its measurement tables and exports again.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellseg_d2.data.io import write_tiff
from cellseg_d2.inference.crop_mosaic import pack_crops
from cellseg_d2.inference.detections import Detection, trim_detection
from cellseg_d2.inference.measure import measure_mosaic
from cellseg_d2.inference.outlines import masks_to_polygons
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import class_color, class_name

__all__ = [
    "CELLS_ALL_DETECTIONS",
    "CELLS_LABEL_IMAGE",
    "CSV_COLUMNS",
    "EXPORT_FORMATS",
    "FORMULA_TRIGGERS",
    "GEOJSON_OBJECT_TYPE",
    "LabelImages",
    "cell_table_rows",
    "cells_to_feature_collection",
    "detections_to_label_images",
    "export_paths",
    "spreadsheet_safe",
    "write_geojson",
    "write_image_exports",
    "write_label_images",
]

#: What ``tools/predict.py --format`` accepts; ``coco`` is the CodaBench submission.
EXPORT_FORMATS = ("coco", "labels", "geojson", "csv")
#: QuPath object type of an exported cell: detections are QuPath's light-weight cell objects.
GEOJSON_OBJECT_TYPE = "detection"
#: What the GeoJSON and the table hold by default: the label image's cells, with its pixels.
CELLS_LABEL_IMAGE = "label image"
#: What they hold with ``keep_overlaps``: every detection, with its own (overlapping) mask.
CELLS_ALL_DETECTIONS = "all detections (overlapping)"
#: The per-cell table's header (one row per cell; QuPath's pixel coordinates, see above).
CSV_COLUMNS = (
    "image",
    "image_id",
    "cell_id",
    "class_id",
    "class_name",
    "score",
    "area_px",
    "centroid_x",
    "centroid_y",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "perimeter",
    "eccentricity",
    "solidity",
    "mean_intensity_r",
    "mean_intensity_g",
    "mean_intensity_b",
    "cells",
)
#: Decimals of the table's centroids: 1e-4 px, far below a pixel, at any image size.
CENTROID_DECIMALS = 4


#: First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")


def spreadsheet_safe(text: str) -> str:
    """A text cell of the per-cell table that no spreadsheet runs as a formula.

    Why: image and class names come from the user's files and config; a name such as
    ``=HYPERLINK(...)`` or ``@SUM(...)`` opened from the CSV in Excel or LibreOffice would be a
    live formula. As OWASP recommends, a cell starting with ``=``, ``+``, ``-``, ``@``, tab,
    carriage return (or NUL) gets a leading single quote, which spreadsheets show as text; the
    csv module quotes the rest. Numbers are never passed here (``-0.5`` stays a number).
    """
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def export_paths(output_dir: str | os.PathLike, file_name: str) -> dict[str, Path]:
    """Where the per-image files of one test image go under ``output_dir``.

    Returns:
        ``{"instances", "classes", "geojson"}`` paths, named after the image's stem;
        ``labels/<stem>_instances.tif`` and ``labels/<stem>_classes.tif`` cannot collide for
        two different stems because both names end in their own suffix.
    """
    output_dir, stem = Path(output_dir), Path(file_name).stem
    return {
        "instances": output_dir / "labels" / f"{stem}_instances.tif",
        "classes": output_dir / "labels" / f"{stem}_classes.tif",
        "geojson": output_dir / "geojson" / f"{stem}.geojson",
    }


@dataclass
class LabelImages:
    """One image's detections resolved into non-overlapping label images, and its cells.

    Attributes:
        instances: HxW uint16 (uint32 above 65535 ids) cell ids, 0 background.
        classes: HxW 1-based class per pixel (uint8, uint16 above 255 classes), 0 background.
        cells: what the GeoJSON and the table hold, ``cells[k - 1]`` being cell id ``k``: the
            label image's cells cut to the pixels they hold there, or with ``keep_overlaps``
            every detection with its own mask (see the module notes).
        keep_overlaps: which of the two ``cells`` holds.
    """

    instances: np.ndarray
    classes: np.ndarray
    cells: list[Detection]
    keep_overlaps: bool = False

    @property
    def note(self) -> str:
        """What the files hold, as they state it: :data:`CELLS_LABEL_IMAGE` or
        :data:`CELLS_ALL_DETECTIONS`."""
        return CELLS_ALL_DETECTIONS if self.keep_overlaps else CELLS_LABEL_IMAGE


def detections_to_label_images(
    detections: Sequence[Detection], height: int, width: int, keep_overlaps: bool = False
) -> LabelImages:
    """Paint detections into an instance and a class label image; higher score wins.

    Why painting by descending score into empty pixels only: a label image has one owner per
    pixel, and the model's most confident cell is the best guess for a contested pixel. A
    detection entirely covered by better ones is dropped, so ids stay 1..n without gaps; with
    ``keep_overlaps`` a detection's id is its rank by score, so that the GeoJSON and the table,
    which then hold every detection, still share the label image's ids.

    Args:
        detections: one image's detections (mask crops in image pixels).
        height, width: the image size.
        keep_overlaps: number (and export) every detection, see :class:`LabelImages`.

    Returns:
        The label images and the cells the other exports hold, in id order.
    """
    ranked = sorted(detections, key=lambda det: -det.score)
    work = np.zeros((height, width), np.uint32)
    cells: list[Detection] = []
    categories = [0]
    for rank, det in enumerate(ranked, start=1):
        y, x = det.top, det.left
        region = work[y : y + det.mask.shape[0], x : x + det.mask.shape[1]]
        free = det.mask & (region == 0)
        if keep_overlaps:
            region[free] = rank
        elif free.any():
            cells.append(trim_detection(det.category, det.score, y, x, free))
            region[free] = len(cells)
        else:
            continue
        categories.append(det.category + 1)
    if keep_overlaps:
        cells = list(ranked)
    largest = len(categories) - 1
    instances = work.astype(np.uint16) if largest <= np.iinfo(np.uint16).max else work
    lookup = np.array(categories, dtype=np.int64)
    class_dtype = np.uint8 if lookup.max() <= np.iinfo(np.uint8).max else np.uint16
    return LabelImages(instances, lookup[work].astype(class_dtype), cells, keep_overlaps)


def write_label_images(labels: LabelImages, instances_path: Path, classes_path: Path) -> None:
    """Write the instance and class label images as compressed TIFFs, each atomically."""
    write_tiff(instances_path, labels.instances, compression="zlib")
    write_tiff(classes_path, labels.classes, compression="zlib")


def cells_to_feature_collection(labels: LabelImages, class_names: Sequence[str]) -> dict:
    """A QuPath-readable GeoJSON FeatureCollection, one ``detection`` feature per cell.

    Each cell of ``labels.cells`` becomes a ``Polygon`` or, for pixels in several pieces, a
    ``MultiPolygon`` (holes kept) along its pixel edges; ``"id"`` is its cell id,
    ``properties.classification`` carries the class ``name`` and an RGB ``color``, and the
    measurements are ``cell_id``, ``score`` and ``area_px`` (the pixel count). The top-level
    ``properties.cells`` says which cells the file holds (see the module notes).
    """
    features = []
    outlines = masks_to_polygons(
        [cell.mask for cell in labels.cells], [(cell.top, cell.left) for cell in labels.cells]
    )
    for cell_id, (cell, pieces) in enumerate(zip(labels.cells, outlines, strict=True), start=1):
        geometry = (
            {"type": "Polygon", "coordinates": pieces[0]}
            if len(pieces) == 1
            else {"type": "MultiPolygon", "coordinates": pieces}
        )
        features.append(
            {
                "type": "Feature",
                "id": cell_id,
                "geometry": geometry,
                "properties": {
                    "objectType": GEOJSON_OBJECT_TYPE,
                    "classification": {
                        "name": class_name(cell.category, class_names),
                        "color": class_color(cell.category),
                    },
                    "measurements": {
                        "cell_id": cell_id,
                        "score": float(cell.score),
                        "area_px": int(np.count_nonzero(cell.mask)),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "properties": {"cells": labels.note}, "features": features}


def write_geojson(path: Path, labels: LabelImages, class_names: Sequence[str]) -> None:
    """Write one image's FeatureCollection atomically (compact JSON)."""
    collection = cells_to_feature_collection(labels, class_names)
    # json.dumps, not json.dump: dump to a file runs the pure-Python encoder (10x slower).
    text = json.dumps(collection, separators=(",", ":"), allow_nan=False)
    with atomic_write(path, "w") as handle:
        handle.write(text)


def cell_table_rows(
    labels: LabelImages,
    image: np.ndarray,
    image_name: str,
    image_id: int,
    class_names: Sequence[str],
) -> str:
    """One image's rows of the per-cell table (:data:`CSV_COLUMNS`, no header) as CSV text.

    Each cell of ``labels.cells`` is measured on its own pixels with
    :func:`~cellseg_d2.inference.measure.measure_mosaic` (regionprops' values): the pixels it
    holds in the label image (what a biologist's table tools measure), or its own mask with
    ``keep_overlaps``. Intensities are the means of the image as the model reads it (8-bit, see
    ``read_image``), per RGB channel.
    Image and class names pass :func:`spreadsheet_safe`.

    Args:
        labels: from :func:`detections_to_label_images`.
        image: the HxWx3 uint8 BGR image.
        image_name: the file name written in the ``image`` column.
        image_id: the id-map id written in the ``image_id`` column.
        class_names: names of the 0-based classes.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not labels.cells:
        return ""
    # all cells measured at once (one mosaic: a handful of whole-image calls, not a dozen each)
    regions = measure_mosaic(
        pack_crops([cell.mask for cell in labels.cells]),
        image[:, :, ::-1],
        np.array([(cell.top, cell.left) for cell in labels.cells], np.int64),
    )
    for cell_id, (cell, region) in enumerate(zip(labels.cells, regions, strict=True), start=1):
        row, col = region.centroid_row, region.centroid_col
        writer.writerow(
            [
                spreadsheet_safe(image_name),
                image_id,
                cell_id,
                cell.category + 1,
                spreadsheet_safe(class_name(cell.category, class_names)),
                f"{cell.score:.6g}",
                int(region.area),
                # mean of the pixel centres, QuPath's convention (the centre of pixel 0 is 0.5)
                repr(round(float(cell.left + col + 0.5), CENTROID_DECIMALS)),
                repr(round(float(cell.top + row + 0.5), CENTROID_DECIMALS)),
                *cell.box,
                f"{region.perimeter:.6g}",
                f"{region.eccentricity:.6g}",
                f"{region.solidity:.6g}",
                *(f"{value:.6g}" for value in region.mean_rgb),
                labels.note,
            ]
        )
    return buffer.getvalue()


def write_image_exports(
    entry: dict,
    image: np.ndarray,
    detections: Sequence[Detection],
    formats: Sequence[str],
    export_dir: Path,
    class_names: Sequence[str],
    keep_overlaps: bool = False,
) -> str | None:
    """Write one image's label images and GeoJSON as ``formats`` ask; return its table rows.

    Why one function: all three exports are numbered from one :class:`LabelImages`, so a cell
    has the same id in each (see the module notes).

    Args:
        entry: the image's id-map entry (``file_name``, ``id``, ``height``, ``width``).
        image: the HxWx3 uint8 BGR image.
        detections: its detections.
        formats: any of :data:`EXPORT_FORMATS` (``coco`` is not written here).
        export_dir: the folder of the exports.
        class_names: names of the 0-based classes.
        keep_overlaps: write every detection to the GeoJSON and the table.

    Returns:
        The image's rows of the per-cell table with ``csv`` (see :func:`cell_table_rows`),
        else None.
    """
    if not {"labels", "geojson", "csv"} & set(formats):
        return None
    labels = detections_to_label_images(detections, entry["height"], entry["width"], keep_overlaps)
    paths = export_paths(export_dir, entry["file_name"])
    if "labels" in formats:
        write_label_images(labels, paths["instances"], paths["classes"])
    if "geojson" in formats:
        write_geojson(paths["geojson"], labels, class_names)
    if "csv" not in formats:
        return None
    return cell_table_rows(labels, image, entry["file_name"], entry["id"], class_names)
