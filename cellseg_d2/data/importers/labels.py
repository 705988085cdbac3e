"""Import images with instance-label images (the Cellpose, StarDist and napari convention).

Matching rule, for each image ``NAME.ext`` in the source folder (.tif, .tiff, .png, .jpg,
.jpeg, .bmp):

- its label image is, in the labels folder (``--labels``, default the source folder), the file
  whose stem is ``NAME`` followed by one of ``_masks``, ``_mask``, ``_labels``, ``_label``,
  ``_cp_masks`` (Cellpose writes ``NAME_cp_masks.png``), or plain ``NAME`` when the labels
  folder is not the image folder (StarDist's ``images/`` + ``masks/``); .tif, .tiff, .png or
  .npy (read without pickles). Files whose stem ends in one of these suffixes, or in
  ``_classes``/``_class``, are never taken for images. An image without a label image is
  refused, since an unannotated image is not an image without cells;
- its classes (optional; one class by default) come from, in the classes folder
  (``--classes``, default the labels folder): a class image ``NAME_classes``/``NAME_class``
  (.tif/.png/.npy: pixel value = class number 1..N, 0 = none), or a table ``NAME.csv`` /
  ``NAME_classes.csv`` (columns ``id`` or ``label`` and ``class``; a class is a name from the
  class names or a number 1..N) or ``NAME.json`` / ``NAME_classes.json`` (``{"id": class}`` or
  a list of ``{"id": .., "class": ..}``).

Ids are kept: the value a cell has in the label image is its id in ``classK.tif``. A cell's
class is the one non-zero class value under its pixels (zeros are ignored, so a class image
may be painted loosely); two different values under one cell, or one id given two classes in a
table, is refused ("an id that appears in two classes"). A cell without a class follows the
shared rule (``--unclassified``, ``--skip-unclassified``, or refused). Without a class source
every cell is of the one class ``--class-names`` gives (more names are an error), or of the
class ``cell`` without names. Without ``--class-names``, class numbers become ``type1``,
``type2``, ... and class names are kept (sorted, as all collected names are).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellseg_d2.data.importers.common import ClassTable, ImportedImage, ImportSummary
from cellseg_d2.data.importers.layout import IMAGE_SUFFIXES
from cellseg_d2.data.io import read_any_image
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import parse_json

__all__ = ["CLASS_SUFFIXES", "MASK_SUFFIXES", "SINGLE_CLASS_NAME", "read_labels", "split_by_class"]

logger = logging.getLogger(__name__)

#: The class of every cell when neither class names nor class files are given.
SINGLE_CLASS_NAME = "cell"
MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "_cp_masks")
CLASS_SUFFIXES = ("_classes", "_class")
_LABEL_EXTS = (".tif", ".tiff", ".png", ".npy")
_MAX_TABLE_BYTES = 64 << 20
_ID_KEYS = ("id", "label", "instance", "instance_id")
_CLASS_KEYS = ("class", "class_name", "type", "class_id")


def _read_array(path: Path) -> np.ndarray:
    """A label or class image as a non-negative int64 array (float ids must be integers)."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CellDataError(
                f"{path}: unreadable .npy (pickled arrays are refused): {exc}"
            ) from exc
    else:
        array = read_any_image(path)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise CellDataError(f"{path}: a label image must be 2-D, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array != np.floor(array)).any():
            raise CellDataError(f"{path}: label values must be whole numbers")
    elif not np.issubdtype(array.dtype, np.integer):
        raise CellDataError(f"{path}: unsupported label dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise CellDataError(f"{path}: label values must not be negative")
    return array.astype(np.int64)


def _find(folder: Path, stems: list[str], exts: tuple[str, ...]) -> Path | None:
    """The one file ``stem + ext`` in ``folder``; several candidates are an error."""
    found = [folder / f"{s}{e}" for s in stems for e in exts if (folder / f"{s}{e}").is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise CellDataError(f"{folder}: several candidate files ({names}); keep one")
    return found[0] if found else None


def _table_rows(path: Path) -> list[tuple[object, object]]:
    """``(id, class)`` pairs of a CSV or JSON class table."""
    if path.stat().st_size > _MAX_TABLE_BYTES:
        raise CellDataError(f"{path}: class table larger than {_MAX_TABLE_BYTES >> 20} MiB")
    if path.suffix.lower() == ".json":
        data = parse_json(path.read_bytes(), str(path))
        if isinstance(data, dict):
            return list(data.items())
        if isinstance(data, list) and all(isinstance(row, dict) for row in data):
            rows = []
            for row in data:
                id_key = next((k for k in _ID_KEYS if k in row), None)
                class_key = next((k for k in _CLASS_KEYS if k in row), None)
                if id_key is None or class_key is None:
                    raise CellDataError(f"{path}: each entry needs an id and a class: {row!r:.80}")
                rows.append((row[id_key], row[class_key]))
            return rows
        raise CellDataError(f"{path}: expected {{id: class}} or a list of {{id, class}} objects")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CellDataError(f"{path}: unreadable CSV: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    fields = {name.strip().lower(): name for name in reader.fieldnames or []}
    id_key = next((fields[k] for k in _ID_KEYS if k in fields), None)
    class_key = next((fields[k] for k in _CLASS_KEYS if k in fields), None)
    if id_key is None or class_key is None:
        raise CellDataError(
            f"{path}: the CSV needs an id column ({'/'.join(_ID_KEYS)}) and a class column "
            f"({'/'.join(_CLASS_KEYS)}); found {reader.fieldnames}"
        )
    return [(row[id_key], row[class_key]) for row in reader]


def _class_of(value: object, classes: ClassTable, where: str) -> int | None:
    """The class index of a table's class value: a number 1..N, a name, or empty for none."""
    if isinstance(value, str):
        value = value.strip()
        if value.isdigit():
            value = int(value)
    if isinstance(value, bool) or value is None or value == "":
        return classes.index(None, where)
    if isinstance(value, int):
        return classes.type_index(value, where)
    if isinstance(value, str):
        return classes.index(value, where)
    raise CellDataError(f"{where}: class {value!r:.40} is neither a name nor a number")


def _table_classes(path: Path, classes: ClassTable) -> dict[int, int | None]:
    """``{cell id: class index or None}`` from a class table; an id given twice is refused."""
    table: dict[int, int | None] = {}
    for raw_id, raw_class in _table_rows(path):
        where = f"{path}: id {raw_id!r:.40}"
        try:
            cell = int(str(raw_id).strip())
        except ValueError:
            raise CellDataError(f"{where}: not an integer cell id") from None
        category = _class_of(raw_class, classes, where)
        if cell in table and table[cell] != category:
            raise CellDataError(f"{where}: the id appears in two classes")
        table[cell] = category
    return table


def _image_classes(
    path: Path, labels: np.ndarray, classes: ClassTable, where: str
) -> dict[int, int | None]:
    """``{cell id: class index or None}`` from a class image (one non-zero value per cell)."""
    values = _read_array(path)
    if values.shape != labels.shape:
        raise CellDataError(
            f"{path}: class image is {values.shape[0]}x{values.shape[1]} but the label image is "
            f"{labels.shape[0]}x{labels.shape[1]}"
        )
    ids = np.unique(labels[labels > 0])
    low = ndimage.minimum(np.where(values > 0, values, np.iinfo(np.int64).max), labels, ids)
    high = ndimage.maximum(values, labels, ids)
    result: dict[int, int | None] = {}
    for cell, first, last in zip(ids.tolist(), np.atleast_1d(low), np.atleast_1d(high)):
        place = f"{where}: cell id {cell}"
        if last == 0:
            result[cell] = classes.index(None, place)
        elif first != last:
            raise CellDataError(
                f"{place}: the id appears in two classes ({int(first)} and {int(last)}) in {path}"
            )
        else:
            result[cell] = classes.type_index(int(last), place)
    return result


def split_by_class(
    labels: np.ndarray, cell_classes: dict[int, int | None], summary: ImportSummary, where: str
) -> dict[int, np.ndarray]:
    """One label image per class from one label image and each cell's class (None = skip).

    Ids are kept; a cell missing from ``cell_classes`` must have been resolved by the caller.
    """
    out: dict[int, np.ndarray] = {}
    lookup_ids = np.array(sorted(cell_classes), dtype=np.int64)
    for cell, category in cell_classes.items():
        if category is None:
            summary.skip("no class", f"{where}: cell id {cell}")
    for category in sorted({c for c in cell_classes.values() if c is not None}):
        members = lookup_ids[[cell_classes[i] == category for i in lookup_ids.tolist()]]
        out[category] = np.where(np.isin(labels, members), labels, 0)
    return out


def _cell_classes(
    labels: np.ndarray,
    class_file: Path | None,
    classes: ClassTable,
    summary: ImportSummary,
    where: str,
) -> dict[int, int | None]:
    """Each cell's class index from the class file (image or table), or the single class."""
    ids = [int(i) for i in np.unique(labels) if i]
    if class_file is None:
        if not classes.fixed:
            return dict.fromkeys(ids, classes.index(SINGLE_CLASS_NAME, where))
        if classes.given > 1:
            raise CellDataError(
                f"{where}: no class image or table (NAME_classes.tif, NAME.csv, NAME.json), but "
                f"{classes.given} class names are given"
            )
        return dict.fromkeys(ids, 0)
    if class_file.suffix.lower() in (".csv", ".json"):
        table = _table_classes(class_file, classes)
        for cell in sorted(set(table) - set(ids)):
            summary.skip("class table id not in the label image", f"{class_file}: id {cell}")
        return {
            cell: table[cell] if cell in table else classes.index(None, f"{where}: cell id {cell}")
            for cell in ids
        }
    return _image_classes(class_file, labels, classes, where)


def _images(source: Path) -> list[Path]:
    """The image files of the source folder, mask and class files left out."""
    if not source.is_dir():
        raise CellDataError(f"{source}: image folder not found")
    skip = MASK_SUFFIXES + CLASS_SUFFIXES
    return sorted(
        p
        for p in source.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(".")
        and not p.stem.endswith(skip)
    )


def read_labels(
    source: Path,
    classes: ClassTable,
    summary: ImportSummary,
    *,
    labels: Path | None = None,
    class_dir: Path | None = None,
) -> Iterator[ImportedImage]:
    """Read images with instance-label images; see the module notes for the matching rule.

    Args:
        source: the image folder.
        classes: the import's class table (one name, the default, for single-class data).
        summary: gets skipped cells.
        labels: the label-image folder; default ``source``.
        class_dir: the folder of class images or tables; default the labels folder.

    Yields:
        One image at a time with its label images split by class.

    Raises:
        CellDataError: an image without a label image, ambiguous candidates, a size mismatch,
            an id in two classes, or bad class values (file and id named).
    """
    label_dir = labels if labels is not None else source
    class_dir = class_dir if class_dir is not None else label_dir
    same = label_dir.resolve() == source.resolve()
    files = _images(source)
    if not files:
        raise CellDataError(f"{source}: no image ({', '.join(IMAGE_SUFFIXES)}) found")
    for image in files:
        stems = [image.stem + s for s in MASK_SUFFIXES] + ([] if same else [image.stem])
        label_path = _find(label_dir, stems, _LABEL_EXTS)
        if label_path is None:
            raise CellDataError(
                f"{image}: no label image ({image.stem}_masks.tif or another of "
                f"{', '.join(MASK_SUFFIXES)}) in {label_dir}"
            )
        class_stems = [image.stem + s for s in CLASS_SUFFIXES]
        class_file = _find(class_dir, class_stems, _LABEL_EXTS + (".csv", ".json"))
        if class_file is None:
            class_file = _find(class_dir, [image.stem], (".csv", ".json"))
        where = str(label_path)
        cells = _read_array(label_path)
        cell_classes = _cell_classes(cells, class_file, classes, summary, where)
        split = split_by_class(cells, cell_classes, summary, where)
        yield ImportedImage(image.stem, image, split, where)
