"""Import a COCO instance-segmentation JSON (CVAT, Label Studio, labelme exports, ...).

What is read:

- ``categories``: sorted by ``id``, their names become the class names (``classK.tif`` is the
  K-th category by id). With ``--class-names``, every category name must be among them.
- ``images``: each ``file_name`` is looked up under the image folder (``--images``; by default
  the JSON's folder, then its ``images/`` subfolder); it must be a relative path without ``..``.
  Its ``height``/``width`` must equal the file's. The image is named by the file's stem, or by
  its relative path (``/`` becoming ``_``) when several files share a stem.
- ``annotations``: ``segmentation`` as polygons (a list of ``[x1, y1, x2, y2, ...]``; several
  polygons are one cell), filled by the pixel-centre rule of :mod:`.raster` (pixel (0, 0)
  covers [0, 1) x [0, 1), COCO's convention); compressed RLE (``counts`` a string) or
  uncompressed RLE (``counts`` a list of run lengths), checked and decoded with pycocotools.
  ``iscrowd: 1`` annotations mark a crowd region, not one cell: they are skipped and counted.

Refused, with the JSON and the annotation id named: a polygon with fewer than 3 points, an RLE
whose ``size`` differs from the image's or whose counts do not add up to it, an unknown
``image_id`` or ``category_id``. Images without annotations are kept as images without cells.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from pycocotools import mask as mask_util

from cellseg_d2.data.importers.common import (
    ClassTable,
    ImportedImage,
    ImportSummary,
    Instance,
    paint_instances,
)
from cellseg_d2.data.importers.raster import rings_to_mask
from cellseg_d2.data.io import image_size
from cellseg_d2.data.rle import check_rle
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import parse_json

__all__ = ["decode_segmentation", "read_coco"]

logger = logging.getLogger(__name__)


def _load(path: Path) -> dict:
    """The COCO dict of ``path`` with its three lists checked."""
    try:
        data = parse_json(path.read_bytes(), str(path))
    except OSError as exc:
        raise CellDataError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise CellDataError(f"{path}: expected a COCO JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CellDataError(f"{path}: '{key}' must be a list (is this a COCO instances file?)")
        for index, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
                raise CellDataError(f"{path}: {key}[{index}] must be an object with an integer id")
    return data


def _categories(data: dict, path: Path, classes: ClassTable) -> dict[int, int]:
    """``{category id: class index}``, the category names adopted as class names."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = []
    for category in categories:
        if not isinstance(category.get("name"), str):
            raise CellDataError(f"{path}: category id {category['id']} has no name")
        names.append(category["name"])
    if len({c["id"] for c in categories}) != len(categories):
        raise CellDataError(f"{path}: a category id is used twice")
    classes.adopt(names, f"{path}: categories")
    return {c["id"]: classes.index(c["name"], f"{path}: category {c['id']}") for c in categories}


def _polygons(segmentation: list, where: str) -> list[list[float]]:
    """Check a COCO polygon list: each polygon at least 3 points of finite numbers."""
    polygons = []
    for index, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon
        ):
            raise CellDataError(f"{where}: polygon {index} is not a list of numbers")
        if len(polygon) % 2 or len(polygon) < 6:
            raise CellDataError(
                f"{where}: polygon {index} has {len(polygon) / 2:g} points; at least 3 (x, y) "
                "pairs are needed"
            )
        if not np.isfinite(polygon).all():
            raise CellDataError(f"{where}: polygon {index} holds NaN or infinite coordinates")
        polygons.append([float(v) for v in polygon])
    return polygons


def decode_segmentation(segmentation: object, height: int, width: int, where: str) -> np.ndarray:
    """The HxW bool mask of a COCO ``segmentation`` (polygons, compressed or uncompressed RLE).

    Why one function: the three forms need different checks before pycocotools sees them
    (pycocotools crashes or reads garbage on malformed input instead of raising).

    Raises:
        CellDataError: malformed polygons or RLE, an RLE of another size than the image.
    """
    if isinstance(segmentation, list):
        rings = [np.asarray(p).reshape(-1, 2) for p in _polygons(segmentation, where)]
        mask = np.zeros((height, width), bool)
        top, left, crop = rings_to_mask(rings, [], height, width)
        mask[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        return mask
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise CellDataError(f"{where}: segmentation must be a polygon list or an RLE object")
    size = segmentation.get("size")
    if size != [height, width]:
        raise CellDataError(
            f"{where}: RLE size {size} differs from the image's [height, width] = "
            f"[{height}, {width}]"
        )
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise CellDataError(f"{where}: RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise CellDataError(
                f"{where}: RLE counts add up to {sum(counts)}, not {height}x{width} pixels"
            )
        rle = mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, str):
        rle = {"size": [height, width], "counts": counts}
        try:
            check_rle(rle)
        except (ValueError, CellDataError) as exc:
            raise CellDataError(f"{where}: bad compressed RLE: {exc}") from exc
        rle = {"size": [height, width], "counts": counts.encode()}
    else:
        raise CellDataError(f"{where}: RLE counts must be a string or a list of integers")
    return mask_util.decode(rle).astype(bool)


def _image_path(folders: list[Path], file_name: object, where: str) -> Path:
    """The image file of a COCO ``file_name``, which must stay inside the image folder."""
    if not isinstance(file_name, str) or not file_name:
        raise CellDataError(f"{where}: missing file_name")
    relative = PurePosixPath(file_name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or (file_name[1:2] == ":"):
        raise CellDataError(
            f"{where}: file_name {file_name!r} must be a path relative to the image folder "
            "(--images), without '..'"
        )
    for folder in folders:
        path = folder.joinpath(*relative.parts)
        if path.is_file():
            return path
    searched = " or ".join(str(f) for f in folders)
    raise CellDataError(f"{where}: image {file_name!r} not found in {searched} (--images)")


def _crop(mask: np.ndarray, category: int, where: str) -> Instance:
    """The tight crop of a full-image mask as an :class:`Instance` (empty masks stay empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return Instance(category, 0, 0, np.zeros((0, 0), bool), where)
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return Instance(category, int(rows[0]), int(cols[0]), crop.copy(), where)


def _image_names(entries: list[dict]) -> dict[int, str]:
    """``{image id: name}``: the file's stem, or its relative path without suffix when two
    images share a stem (``a/image.tif`` and ``b/image.tif`` become ``a/image``, ``b/image``)."""
    paths = {
        e["id"]: PurePosixPath(str(e.get("file_name", "")).replace("\\", "/")) for e in entries
    }
    stems = Counter(p.stem for p in paths.values())
    return {
        image_id: p.stem if stems[p.stem] == 1 else str(p.with_suffix(""))
        for image_id, p in paths.items()
    }


def _annotations_by_image(data: dict, source: Path) -> dict[int, list[dict]]:
    """The annotations grouped by ``image_id``, each of which must name an entry of ``images``."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    image_ids = {entry["id"] for entry in data["images"]}
    for annotation in data["annotations"]:
        if annotation.get("image_id") not in image_ids:
            raise CellDataError(
                f"{source}: annotation id {annotation['id']} names image_id "
                f"{annotation.get('image_id')!r}, which is not in 'images'"
            )
        by_image[annotation["image_id"]].append(annotation)
    return by_image


def _instance(
    annotation: dict,
    categories: dict[int, int],
    classes: ClassTable,
    summary: ImportSummary,
    size: tuple[int, int],
    place: str,
) -> Instance | None:
    """One annotation as an instance crop of its class; None (counted in ``summary``) for a
    crowd region or an annotation the class rules skip."""
    if annotation.get("iscrowd"):
        summary.skip("iscrowd=1: a crowd region, not one cell", place)
        return None
    category_id = annotation.get("category_id")
    if category_id is None:
        category = classes.index(None, place)
    elif category_id in categories:
        category = categories[category_id]
    else:
        raise CellDataError(f"{place}: category_id {category_id!r} is not in 'categories'")
    if category is None:
        summary.skip("no class", place)
        return None
    mask = decode_segmentation(annotation.get("segmentation"), *size, place)
    return _crop(mask, category, place)


def read_coco(
    source: Path, classes: ClassTable, summary: ImportSummary, *, images: Path | None = None
) -> Iterator[ImportedImage]:
    """Read a COCO instances JSON image by image; see the module notes for the rules.

    Args:
        source: the COCO JSON file.
        classes: the import's class table; the categories are adopted as class names.
        summary: gets the skipped annotations.
        images: the image folder; default the JSON's folder, then its ``images/`` subfolder.

    Yields:
        One image at a time with its label images.

    Raises:
        CellDataError: naming the JSON and the annotation or image entry.
    """
    if not source.is_file():
        raise CellDataError(f"{source}: COCO JSON file not found")
    data = _load(source)
    categories = _categories(data, source, classes)
    folders = [images] if images is not None else [source.parent, source.parent / "images"]
    by_image = _annotations_by_image(data, source)
    logger.info(
        "%s: %d images, %d annotations, categories %s",
        source,
        len(data["images"]),
        len(data["annotations"]),
        classes.names,
    )
    names = _image_names(data["images"])
    for entry in data["images"]:
        where = f"{source}: image id {entry['id']}"
        path = _image_path(folders, entry.get("file_name"), where)
        height, width = image_size(path)
        if (entry.get("height"), entry.get("width")) != (height, width):
            raise CellDataError(
                f"{where}: the JSON says {entry.get('height')}x{entry.get('width')} px but "
                f"{path} is {height}x{width} px"
            )
        instances = []
        for annotation in by_image.get(entry["id"], []):
            place = f"{source}: annotation id {annotation['id']} (image {entry['file_name']})"
            instance = _instance(annotation, categories, classes, summary, (height, width), place)
            if instance is not None:
                instances.append(instance)
        labels = paint_instances(instances, height, width, summary)
        yield ImportedImage(names[entry["id"]], path, labels, f"{source}: {entry['file_name']}")
