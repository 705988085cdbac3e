"""Per-image exports beyond the COCO submission: label images, QuPath GeoJSON, per-cell tables.

People who segment cells for a living open results in napari, Fiji, Cellpose or QuPath and
measure cells in tables; those tools speak label images and GeoJSON, not COCO RLE. Each writer
here takes one image's :class:`~cellseg_d2.inference.detections.Detection` list (tight mask crops)
and writes its file atomically, so a prediction run can stream folder after folder without ever
holding more than one image's results.

Formats (``tools/predict.py --format``):

- ``labels``: ``<stem>_instances.tif``, an instance label image (uint16, uint32 above 65535
  cells; 0 background, ids 1..n by descending score) and ``<stem>_classes.tif`` beside it
  (the 1-based class of every pixel). Label images cannot overlap: where detections overlap the
  higher score wins, and a detection left without a pixel is dropped.
- ``geojson``: ``<stem>.geojson``, a QuPath FeatureCollection with one ``detection`` per cell:
  its own (unresolved) mask as a polygon with holes, ``classification`` ``{name, color}`` and
  the score in ``measurements``.
- ``csv``: one row per cell of the label image (the same ids), measured with
  ``skimage.measure.regionprops_table`` (:data:`CSV_COLUMNS`).
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
from skimage import measure

from cellseg_d2.data.io import write_tiff
from cellseg_d2.inference.detections import Detection
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import class_color, class_name

__all__ = [
    "CSV_COLUMNS",
    "EXPORT_FORMATS",
    "FORMULA_TRIGGERS",
    "GEOJSON_OBJECT_TYPE",
    "LabelImages",
    "cell_table_rows",
    "detections_to_feature_collection",
    "detections_to_label_images",
    "export_paths",
    "mask_to_polygons",
    "spreadsheet_safe",
    "write_geojson",
    "write_label_images",
]

#: What ``tools/predict.py --format`` accepts; ``coco`` is the CodaBench submission.
EXPORT_FORMATS = ("coco", "labels", "geojson", "csv")
#: QuPath object type of an exported cell: detections are QuPath's light-weight cell objects.
GEOJSON_OBJECT_TYPE = "detection"
#: The per-cell table's header (one row per label-image id; pixels, 0-based, exclusive ends).
CSV_COLUMNS = (
    "image",
    "image_id",
    "id",
    "class_id",
    "class_name",
    "score",
    "area",
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
)


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
    """One image's detections resolved into non-overlapping label images.

    Attributes:
        instances: HxW uint16 (uint32 above 65535 cells) ids 1..n, 0 background.
        classes: HxW 1-based class per pixel (uint8, uint16 above 255 classes), 0 background.
        kept: the detections that kept at least one pixel; ``kept[i]`` has id ``i + 1``.
    """

    instances: np.ndarray
    classes: np.ndarray
    kept: list[Detection]


def detections_to_label_images(
    detections: Sequence[Detection], height: int, width: int
) -> LabelImages:
    """Paint detections into an instance and a class label image; higher score wins.

    Why painting by descending score into empty pixels only: a label image has one owner per
    pixel, and the model's most confident cell is the best guess for a contested pixel. A
    detection entirely covered by better ones is dropped, so ids stay 1..n without gaps.

    Args:
        detections: one image's detections (mask crops in image pixels).
        height, width: the image size.

    Returns:
        The label images and the detections they hold, in id order.
    """
    order = sorted(range(len(detections)), key=lambda i: -detections[i].score)
    work = np.zeros((height, width), np.uint32)
    kept: list[Detection] = []
    for index in order:
        det = detections[index]
        y, x = det.top, det.left
        region = work[y : y + det.mask.shape[0], x : x + det.mask.shape[1]]
        free = det.mask & (region == 0)
        if free.any():
            kept.append(det)
            region[free] = len(kept)
    instances = work.astype(np.uint16) if len(kept) <= np.iinfo(np.uint16).max else work
    categories = np.array([0] + [det.category + 1 for det in kept], dtype=np.int64)
    class_dtype = np.uint8 if categories.max() <= np.iinfo(np.uint8).max else np.uint16
    return LabelImages(instances, categories[work].astype(class_dtype), kept)


def write_label_images(labels: LabelImages, instances_path: Path, classes_path: Path) -> None:
    """Write the instance and class label images as compressed TIFFs, each atomically."""
    write_tiff(instances_path, labels.instances, compression="zlib")
    write_tiff(classes_path, labels.classes, compression="zlib")


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """A closed ring (first point repeated last) without its collinear middle vertices."""
    points = ring[:-1]
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points - before)[:, 0] * (after - points)[:, 1] - (points - before)[:, 1] * (
        after - points
    )[:, 0]
    corners = points[cross != 0]
    return np.concatenate([corners, corners[:1]]) if len(corners) >= 3 else ring


def mask_to_polygons(mask: np.ndarray, top: int = 0, left: int = 0) -> list[list[list[list]]]:
    """Polygons with holes around a mask's pixels, in QuPath's pixel-corner coordinates.

    How: marching squares at level 0.5 (``skimage.measure.find_contours``) on the mask padded
    with background. Its vertices lie on pixel edges between a foreground and a background
    pixel centre, so the polygon never passes through a pixel centre and a centre-sampling
    rasteriser (QuPath, ``skimage.draw.polygon``) gives back exactly the mask's pixels;
    straight borders lie on the pixel edges, convex corners are cut by 1/8 px. With
    ``positive_orientation="high"`` outer rings run one way and holes the other, which is how
    holes are told apart and put into the outer ring that contains them.

    Args:
        mask: bool crop.
        top, left: the crop's position in the image.

    Returns:
        GeoJSON ``MultiPolygon`` coordinates: per connected piece ``[outer, *holes]``, each ring
        a closed ``[[x, y], ...]`` list.
    """
    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    contours = measure.find_contours(
        padded, 0.5, fully_connected="high", positive_orientation="high"
    )
    outers: list[tuple[float, np.ndarray]] = []
    holes: list[np.ndarray] = []
    for contour in contours:
        ring = _drop_collinear(contour)
        rows, cols = ring[:, 0], ring[:, 1]
        # Shoelace in (x, y) = (col, row): with y pointing down, outer rings come out negative.
        signed = np.dot(cols, np.roll(rows, -1)) - np.dot(rows, np.roll(cols, -1))
        if signed < 0:
            outers.append((-signed, ring))
        else:
            holes.append(ring)
    # Smallest outer ring first: a hole belongs to the innermost piece around it (an island
    # inside another piece's hole is a piece of its own).
    pieces = [[ring] for _, ring in sorted(outers, key=lambda item: item[0])]
    for hole in holes:
        for piece in pieces:
            if measure.points_in_poly(hole[:1], piece[0])[0]:
                piece.append(hole)
                break

    def to_xy(ring: np.ndarray) -> list[list]:
        # padded (row, col) at pixel centres -> image pixel-corner (x, y): -1 pad, +0.5 centre
        xy = np.stack([ring[:, 1] - 0.5 + left, ring[:, 0] - 0.5 + top], axis=1)
        return [[float(x), float(y)] for x, y in xy]

    return [[to_xy(ring) for ring in piece] for piece in pieces]


def detections_to_feature_collection(
    detections: Sequence[Detection], class_names: Sequence[str]
) -> dict:
    """A QuPath-readable GeoJSON FeatureCollection, one ``detection`` feature per cell.

    Each cell keeps its own mask (QuPath objects may overlap): a ``Polygon`` or, for a mask in
    several pieces, a ``MultiPolygon``, holes kept. ``properties.classification`` carries the
    class ``name`` and an RGB ``color``; the score is a QuPath measurement.
    """
    features = []
    for det in detections:
        pieces = mask_to_polygons(det.mask, det.top, det.left)
        if not pieces:
            continue
        geometry = (
            {"type": "Polygon", "coordinates": pieces[0]}
            if len(pieces) == 1
            else {"type": "MultiPolygon", "coordinates": pieces}
        )
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "objectType": GEOJSON_OBJECT_TYPE,
                    "classification": {
                        "name": class_name(det.category, class_names),
                        "color": class_color(det.category),
                    },
                    "measurements": {"score": float(det.score)},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: Path, detections: Sequence[Detection], class_names: Sequence[str]) -> None:
    """Write one image's FeatureCollection atomically (compact JSON)."""
    collection = detections_to_feature_collection(detections, class_names)
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

    Image and class names pass :func:`spreadsheet_safe`. Measured on the non-overlapping label
    image (what a biologist's table tools measure), with
    ``skimage.measure.regionprops_table``; intensities are the means of the image as the model
    reads it (8-bit, see ``read_image``), per RGB channel.

    Args:
        labels: from :func:`detections_to_label_images`.
        image: the HxWx3 uint8 BGR image.
        image_name: the file name written in the ``image`` column.
        image_id: the id-map id written in the ``image_id`` column.
        class_names: names of the 0-based classes.
    """
    if not labels.kept:
        return ""
    table = measure.regionprops_table(
        labels.instances,
        intensity_image=image[:, :, ::-1],
        properties=(
            "label",
            "area",
            "centroid",
            "bbox",
            "perimeter",
            "eccentricity",
            "solidity",
            "intensity_mean",
        ),
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in range(len(table["label"])):
        det = labels.kept[int(table["label"][row]) - 1]
        writer.writerow(_table_row(table, row, det, image_name, image_id, class_names))
    return buffer.getvalue()


def _table_row(
    table: dict[str, np.ndarray],
    row: int,
    det: Detection,
    image_name: str,
    image_id: int,
    class_names: Sequence[str],
) -> list[object]:
    """The :data:`CSV_COLUMNS` values of one cell: row ``row`` of the regionprops table."""
    return [
        spreadsheet_safe(image_name),
        image_id,
        int(table["label"][row]),
        det.category + 1,
        spreadsheet_safe(class_name(det.category, class_names)),
        f"{det.score:.6g}",
        int(table["area"][row]),
        f"{table['centroid-1'][row]:.6g}",
        f"{table['centroid-0'][row]:.6g}",
        int(table["bbox-1"][row]),
        int(table["bbox-0"][row]),
        int(table["bbox-3"][row]),
        int(table["bbox-2"][row]),
        f"{table['perimeter'][row]:.6g}",
        f"{table['eccentricity'][row]:.6g}",
        f"{table['solidity'][row]:.6g}",
        *(f"{table[f'intensity_mean-{c}'][row]:.6g}" for c in range(3)),
    ]
