"""Import images with objects exported from QuPath as GeoJSON.

Pairing: every ``X.geojson`` (or ``X.json``) in the source folder (or the one GeoJSON file
given) annotates the image named ``X`` (when ``X`` is itself a file name such as
``slide.tif``, as QuPath's export names it) or the image with stem ``X`` (any of .tif, .tiff,
.png, .jpg, .jpeg, .bmp), looked up in ``--images`` (default: beside the GeoJSON). Images
without a GeoJSON are not imported.

Objects: a FeatureCollection, a plain list of features or one feature; annotations, detections
and cells alike (``--nucleus`` takes a cell's ``nucleusGeometry`` instead of its outline).
Polygons with holes and MultiPolygons are filled as one cell each; QuPath's ``tile`` objects
and non-area geometries (points, lines) are skipped and counted. The class is
``properties.classification.name`` (or a plain string there); objects without one follow the
shared rule: ``--unclassified NAME``, ``--skip-unclassified``, or refused.

Pixel convention: QuPath coordinates are in pixels of the full-resolution image with the
*corner* of pixel (0, 0) at (0, 0), so its centre is at (0.5, 0.5). A pixel belongs to an
object when its centre lies inside the polygon and outside its holes (:mod:`.raster`).

Validity: a polygon ring with fewer than 3 distinct points is refused (file and feature index
named). An invalid geometry (a self-intersecting "bow-tie" ring, overlapping MultiPolygon
parts) is repaired with ``shapely.make_valid`` and counted as repaired; what is left of it is
its area. An object lying wholly outside the image is refused: the GeoJSON most likely belongs
to another image (or to a whole slide of which the image is a crop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from cellseg_d2.data.importers.common import (
    ClassTable,
    ImportedImage,
    ImportSummary,
    Instance,
    paint_instances,
)
from cellseg_d2.data.importers.layout import IMAGE_SUFFIXES, find_image
from cellseg_d2.data.importers.raster import rings_to_mask
from cellseg_d2.data.io import image_size
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import parse_json

__all__ = ["GEOJSON_SUFFIXES", "geometry_to_mask", "read_qupath"]

logger = logging.getLogger(__name__)

GEOJSON_SUFFIXES = (".geojson", ".json")
_SKIPPED_TYPES = {"tile": "a QuPath tile, not a cell"}


def _features(path: Path) -> list:
    """The features of a GeoJSON file: FeatureCollection, list of features or one feature."""
    try:
        data = parse_json(path.read_bytes(), str(path))
    except OSError as exc:
        raise CellDataError(f"{path}: unreadable: {exc}") from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        data = [data]
    if not isinstance(data, list):
        raise CellDataError(
            f"{path}: expected a GeoJSON FeatureCollection, a list of features or one feature"
        )
    return data


def _class_name(properties: dict, where: str) -> str | None:
    """``classification.name`` of a feature's properties (a plain string is accepted too)."""
    classification = properties.get("classification")
    if isinstance(classification, dict):
        classification = classification.get("name")
    if classification is None or isinstance(classification, str):
        return classification or None
    raise CellDataError(f"{where}: properties.classification must be an object with a name")


def _ring(coordinates: object, where: str) -> list[tuple[float, float]]:
    """A ring's points as floats, refused with fewer than 3 distinct points or bad numbers."""
    if not isinstance(coordinates, list):
        raise CellDataError(f"{where}: a polygon ring must be a list of [x, y] positions")
    points = []
    for position in coordinates:
        if (
            not isinstance(position, list)
            or len(position) < 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in position)
            or not all(math.isfinite(v) for v in position[:2])
        ):
            raise CellDataError(f"{where}: bad position {position!r:.80} (expected [x, y])")
        points.append((float(position[0]), float(position[1])))
    if len(set(points)) < 3:
        raise CellDataError(
            f"{where}: a polygon ring has {len(set(points))} distinct point(s); at least 3 are "
            "needed"
        )
    return points


def _polygon(rings: object, where: str) -> Polygon:
    """A shapely polygon from GeoJSON ``[exterior, hole, ...]`` rings."""
    if not isinstance(rings, list) or not rings:
        raise CellDataError(f"{where}: a Polygon needs a list of rings")
    exterior, *holes = (_ring(ring, where) for ring in rings)
    return Polygon(exterior, holes)


def _geometry(geometry: object, where: str) -> tuple[Polygon | MultiPolygon | None, str]:
    """A shapely area from a GeoJSON geometry, or None and why it is not one."""
    if not isinstance(geometry, dict):
        return None, "no geometry"
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    if kind == "Polygon":
        return _polygon(coordinates, where), ""
    if kind == "MultiPolygon":
        if not isinstance(coordinates, list) or not coordinates:
            raise CellDataError(f"{where}: a MultiPolygon needs a list of polygons")
        return MultiPolygon([_polygon(part, where) for part in coordinates]), ""
    return None, f"geometry type {kind} is not an area"


def _repair(shape: Polygon | MultiPolygon, summary: ImportSummary) -> Polygon | MultiPolygon:
    """A valid version of ``shape`` (its polygonal part), counting a repair when one was made."""
    if shape.is_valid:
        return shape
    summary.repaired += 1
    fixed = shapely.make_valid(shape)
    parts = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, (Polygon, MultiPolygon))]
    polygons = [p for g in parts for p in getattr(g, "geoms", [g])]
    return MultiPolygon(polygons) if polygons else Polygon()


def geometry_to_mask(
    shape: Polygon | MultiPolygon, height: int, width: int
) -> tuple[int, int, np.ndarray]:
    """Rasterise a valid area with the pixel-centre rule (see :mod:`.raster`).

    Returns:
        ``(top, left, bool crop)`` cut to the image; an empty crop when no pixel centre is in.
    """
    if shape.is_empty:
        return 0, 0, np.zeros((0, 0), bool)
    # Polygon by polygon: in a valid MultiPolygon a part may lie inside another part's hole
    # (a cell's island within its own gap, as pixel-edge outlines of a mask give it); its
    # pixels belong to the cell, so each part clears only its own holes.
    pieces = []
    for polygon in getattr(shape, "geoms", [shape]):
        holes = [np.asarray(h.coords) for h in polygon.interiors]
        top, left, crop = rings_to_mask([np.asarray(polygon.exterior.coords)], holes, height, width)
        if crop.size:
            pieces.append((top, left, crop))
    if not pieces:
        return 0, 0, np.zeros((0, 0), bool)
    top = min(t for t, _, _ in pieces)
    left = min(x for _, x, _ in pieces)
    bottom = max(t + c.shape[0] for t, _, c in pieces)
    right = max(x + c.shape[1] for _, x, c in pieces)
    mask = np.zeros((bottom - top, right - left), bool)
    for t, x, crop in pieces:
        mask[t - top : t - top + crop.shape[0], x - left : x - left + crop.shape[1]] |= crop
    return top, left, mask


def _instances(
    path: Path, classes: ClassTable, summary: ImportSummary, size: tuple[int, int], nucleus: bool
) -> list[Instance]:
    """The cells of one GeoJSON file, rasterised on an image of ``size``."""
    height, width = size
    instances = []
    for index, feature in enumerate(_features(path)):
        where = f"{path}: feature {index}"
        if not isinstance(feature, dict):
            raise CellDataError(f"{where}: not a GeoJSON feature object")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise CellDataError(f"{where}: properties must be an object")
        object_type = properties.get("objectType", properties.get("object_type"))
        if object_type in _SKIPPED_TYPES:
            summary.skip(_SKIPPED_TYPES[object_type], where)
            continue
        geometry = feature.get("geometry")
        if nucleus and isinstance(feature.get("nucleusGeometry"), dict):
            geometry = feature["nucleusGeometry"]
        shape, why = _geometry(geometry, where)
        if shape is None:
            summary.skip(why, where)
            continue
        category = classes.index(_class_name(properties, where), where)
        if category is None:
            summary.skip("no class", where)
            continue
        shape = _repair(shape, summary)
        minx, miny, maxx, maxy = shape.bounds if not shape.is_empty else (0, 0, 0, 0)
        if not shape.is_empty and (maxx <= 0 or maxy <= 0 or minx >= width or miny >= height):
            raise CellDataError(
                f"{where}: the object (x {minx:g}..{maxx:g}, y {miny:g}..{maxy:g}) lies outside "
                f"the {width}x{height} px image; is this GeoJSON from another image, or from "
                "the whole slide this image was cut from?"
            )
        top, left, crop = geometry_to_mask(shape, height, width)
        instances.append(Instance(category, top, left, crop, where))
    return instances


def _pairs(source: Path, images: Path | None) -> list[tuple[Path, Path | None]]:
    """``(GeoJSON, image or None)`` pairs of a source folder or single file, sorted."""
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(
            p
            for p in source.iterdir()
            if p.suffix.lower() in GEOJSON_SUFFIXES and not p.name.startswith(".")
        )
    else:
        raise CellDataError(f"{source}: GeoJSON file or folder not found")
    if not files:
        raise CellDataError(f"{source}: no .geojson or .json file")
    folder = images if images is not None else (source if source.is_dir() else source.parent)
    pairs = []
    for path in files:
        stem = path.name[: -len(path.suffix)]
        exact = folder / stem
        if Path(stem).suffix.lower() in IMAGE_SUFFIXES and exact.is_file():
            pairs.append((path, exact))
        else:
            pairs.append((path, find_image([folder], stem)))
    return pairs


def read_qupath(
    source: Path,
    classes: ClassTable,
    summary: ImportSummary,
    *,
    images: Path | None = None,
    nucleus: bool = False,
) -> Iterator[ImportedImage]:
    """Read QuPath GeoJSON exports and their images; see the module notes for the rules.

    Args:
        source: a folder of ``.geojson``/``.json`` files, or one such file.
        classes: the import's class table (classification names are collected or checked).
        summary: gets skipped objects and repairs.
        images: the image folder; default the GeoJSON's folder.
        nucleus: use a cell's ``nucleusGeometry`` where it has one.

    Yields:
        One image at a time with its label images.

    Raises:
        CellDataError: a GeoJSON without its image, or a bad object (file and feature named).
    """
    for path, image in _pairs(source, images):
        if image is None:
            raise CellDataError(
                f"{path}: no image named {path.stem!r} (with {', '.join(IMAGE_SUFFIXES)}) in "
                f"{images or path.parent}; pass the image folder with --images"
            )
        size = image_size(image)
        instances = _instances(path, classes, summary, size, nucleus)
        labels = paint_instances(instances, *size, summary)
        logger.debug("%s: %d objects on %s", path, len(instances), image)
        yield ImportedImage(Path(image.name).stem, image, labels, str(path))
