"""What every importer shares: class names, the report, and painting cells into label images.

An importer turns each source image into *instances* (a class and a pixel mask) or into ready
label images, and hands them to :class:`~cellseg_d2.data.importers.layout.DatasetWriter`, which
writes the project's layout. This module holds the parts in between:

- :class:`ClassTable` maps the source's class labels to ``classK.tif`` numbers and applies the
  one rule for objects without a class (``--unclassified NAME`` puts them in a named class,
  ``--skip-unclassified`` leaves them out, and by default they are refused);
- :class:`ImportSummary` counts what was read and skipped, and why;
- :func:`paint_instances` turns possibly overlapping masks into one label image per class.

NOTE on overlaps: a label image gives each pixel one cell, so two cells of the *same* class that
overlap in the source must share their pixels out. The rule is "smaller on top": cells are
painted largest first, so a small cell lying on a large one stays whole and the large one loses
the shared pixels. A cell left with no pixel is skipped (reported). Cells of *different* classes
live in different ``classK.tif`` files and keep their overlap.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import check_class_names

__all__ = [
    "ClassTable",
    "ImportOptions",
    "ImportedImage",
    "ImportSummary",
    "Instance",
    "label_dtype",
    "paint_instances",
    "safe_name",
]

logger = logging.getLogger(__name__)

#: Skipped objects named one by one in the log before the rest are only counted.
_LOGGED_SKIPS = 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ImportOptions:
    """The choices every importer understands (the tool's shared flags).

    Attributes:
        class_names: the class names in ``classK.tif`` order, or None to take them from the
            source (COCO categories, QuPath classifications, ...).
        unclassified: put objects without a class into the class of this name (appended to the
            names when they do not hold it); None: see ``skip_unclassified``.
        skip_unclassified: leave objects without a class out (counted as skipped) instead of
            refusing the input.
        pixel_size_um: micrometres per pixel for ``dataset.json``; None to read it from the
            images' metadata where they have it.
    """

    class_names: tuple[str, ...] | None = None
    unclassified: str | None = None
    skip_unclassified: bool = False
    pixel_size_um: float | None = None


@dataclass
class Instance:
    """One cell to paint: class index (0-based, ``classK.tif`` is K - 1) and its mask crop.

    Attributes:
        category: 0-based class index.
        top: row of the crop's first row in the image.
        left: column of the crop's first column in the image.
        mask: bool crop; pixels outside the image must already be cut off.
        source: how to name the object in messages (file and object index or id).
    """

    category: int
    top: int
    left: int
    mask: np.ndarray
    source: str


class ImportedImage(NamedTuple):
    """One image an importer read: what :class:`~.layout.DatasetWriter` writes.

    Attributes:
        name: the image's name in the source (made safe and unique by the writer).
        image: the image file, or its pixels (HxW or HxWxC).
        labels: ``{0-based class index: HxW instance ids}``.
        where: the source files, for messages.
    """

    name: str
    image: Path | np.ndarray
    labels: dict[int, np.ndarray]
    where: str


@dataclass
class ImportSummary:
    """What an import read, wrote and skipped, for the log and the tool's report.

    Attributes:
        source_format: the importer's name.
        images: written images per split (``"train"``, ``"test"``).
        cells: written cells per class name, in class order.
        skipped: skipped objects per reason.
        repaired: polygons whose invalid geometry (e.g. a self-intersecting ring) was repaired.
        trimmed: cells that lost pixels to a smaller cell of their class painted on top.
        pixel_size_um: the pixel size recorded in ``dataset.json`` (None if unknown).
        output: the dataset root written.
    """

    source_format: str
    images: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    cells: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    repaired: int = 0
    trimmed: int = 0
    pixel_size_um: float | None = None
    output: str = ""

    def skip(self, reason: str, where: str) -> None:
        """Count one skipped object; the first few are also logged with their place."""
        total = sum(self.skipped.values())
        self.skipped[reason] += 1
        level = logging.WARNING if total < _LOGGED_SKIPS else logging.DEBUG
        logger.log(level, "%s: skipped (%s)", where, reason)

    def format(self) -> str:
        """A short human-readable report."""
        lines = [
            f"imported from:   {self.source_format}",
            f"dataset root:    {self.output}",
            f"train images:    {self.images['train']}",
            f"test images:     {self.images['test']}",
            f"cells:           {sum(self.cells.values())}",
        ]
        lines += [f"  {name}: {count}" for name, count in self.cells.items()]
        lines.append(f"skipped objects: {sum(self.skipped.values())}")
        lines += [f"  {reason}: {count}" for reason, count in sorted(self.skipped.items())]
        lines.append(f"repaired polygons: {self.repaired}")
        lines.append(f"cells trimmed by an overlapping cell of their class: {self.trimmed}")
        size = "unknown" if self.pixel_size_um is None else f"{self.pixel_size_um:g} um/px"
        lines.append(f"pixel size:      {size}")
        return "\n".join(lines)


class ClassTable:
    """Maps source class labels to 0-based class indices (``classK.tif`` is index K - 1).

    Why one table: every importer must apply the same rules. With names given, a label outside
    them is an error naming the object; without, names are collected as they appear and put in
    sorted order at the end (:meth:`final_order`), so the result does not depend on which file
    came first.
    """

    def __init__(self, options: ImportOptions, default: Sequence[str] | None = None) -> None:
        """Start from ``options.class_names`` or, when None, from ``default`` (None = open).

        Args:
            options: the shared import options.
            default: names an importer knows when the user gives none (PanNuke's five, COCO's
                categories); None lets names be collected from the source.
        """
        names = options.class_names if options.class_names is not None else default
        self.fixed = names is not None
        self.unclassified = options.unclassified
        self.skip_unclassified = options.skip_unclassified
        if self.unclassified is not None:
            check_class_names([self.unclassified], "--unclassified")
        self.names: list[str] = []
        self._set_names(names or [])

    def _set_names(self, names: Sequence[str]) -> None:
        """Take ``names`` (checked), then the unclassified class when it is not among them."""
        self.names = list(check_class_names(names, "--class-names")) if names else []
        #: How many names came from the user or the source (the unclassified class excluded).
        self.given = len(self.names)
        if self.unclassified is not None and self.unclassified not in self.names:
            self.names.append(self.unclassified)

    def adopt(self, names: Sequence[str], where: str) -> None:
        """Use the source's own class list (e.g. COCO categories) unless names were given.

        With names given, each of the source's names must be among them.

        Raises:
            CellDataError: repeated or empty source names; a source name outside the given ones.
        """
        if self.fixed:
            for name in names:
                self.index(name, where)
            return
        check_class_names(list(names), f"{where}: class names")
        self._set_names(names)
        self.fixed = True

    def index(self, label: str | None, where: str) -> int | None:
        """The class index of ``label``; None when the object is to be skipped.

        Args:
            label: the source's class name, or None (or "") for an object without a class.
            where: the file and object, for messages.

        Raises:
            CellDataError: no class and neither ``--unclassified`` nor ``--skip-unclassified``;
                a class outside the given names.
        """
        if label is None or label == "":
            if self.unclassified is not None:
                return self.names.index(self.unclassified)
            if self.skip_unclassified:
                return None
            raise CellDataError(
                f"{where}: object without a class; pass --unclassified NAME to give such "
                "objects a class, or --skip-unclassified to leave them out"
            )
        if label in self.names:
            return self.names.index(label)
        if self.fixed:
            raise CellDataError(
                f"{where}: class {label!r} is not among the class names {self.names}; add it "
                "to --class-names"
            )
        check_class_names([label], f"{where}: class name")
        self.names.append(label)
        return len(self.names) - 1

    def type_index(self, type_id: int, where: str) -> int | None:
        """The class index of a numeric type (1-based; 0 = no class), as label sources use.

        With names given, type K is name K; otherwise type K is collected as ``typeK``.

        Raises:
            CellDataError: a type above the number of given names, a negative type, or type 0
                under the refusing rule of :meth:`index`.
        """
        if type_id < 0:
            raise CellDataError(f"{where}: negative type {type_id}")
        if type_id == 0:
            return self.index(None, where)
        if self.fixed:
            if type_id > self.given:
                raise CellDataError(
                    f"{where}: type {type_id}, but the class names list only {self.given}: "
                    f"{self.names[: self.given]}; give one name per type with --class-names"
                )
            return type_id - 1
        return self.index(f"type{type_id}", where)

    def final_order(self) -> tuple[list[str], list[int]]:
        """The final class names and, for each index handed out, its final index.

        Given names keep their order; collected names are sorted, digits by value (``type2``
        before ``type10``), and the unclassified class, when named, stays last.
        """
        if self.fixed or not self.names:
            return list(self.names), list(range(len(self.names)))
        collected = [n for n in self.names if n != self.unclassified]
        order = sorted(collected, key=_natural_key)
        if self.unclassified is not None:
            order.append(self.unclassified)
        return order, [order.index(name) for name in self.names]


def _natural_key(name: str) -> list:
    """Sort key that orders ``type2`` before ``type10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def safe_name(text: str) -> str:
    """A folder or file name built from a source name, safe for the layout and the id map.

    Runs of characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_`` (path
    separators included, so ``a/b`` becomes ``a_b``); leading dots and underscores are dropped,
    since the scanner ignores hidden names (and ``..`` must never be a folder name).
    """
    return _UNSAFE.sub("_", text).lstrip("._").rstrip("_") or "image"


def label_dtype(max_id: int) -> np.dtype:
    """The smallest unsigned integer type holding ids up to ``max_id`` (uint8 at least)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def paint_instances(
    instances: Sequence[Instance], height: int, width: int, summary: ImportSummary
) -> dict[int, np.ndarray]:
    """One label image per class from possibly overlapping cell masks ("smaller on top").

    Cells are numbered 1..n in the order given, across all classes, so an id names one cell of
    the image whatever its class. See the module note for the overlap rule.

    Args:
        instances: the cells, crops already inside the image.
        height: image height.
        width: image width.
        summary: gets the skipped (fully covered) and trimmed cells.

    Returns:
        ``{class index: HxW label image}`` for the classes that keep at least one cell.
    """
    dtype = label_dtype(len(instances))
    labels: dict[int, np.ndarray] = {}
    areas = [int(np.count_nonzero(inst.mask)) for inst in instances]
    for number in sorted(range(len(instances)), key=lambda i: -areas[i]):
        inst = instances[number]
        if areas[number] == 0:
            continue
        image = labels.setdefault(inst.category, np.zeros((height, width), dtype))
        rows, cols = inst.mask.shape
        window = image[inst.top : inst.top + rows, inst.left : inst.left + cols]
        window[inst.mask] = number + 1
    for number, inst in enumerate(instances):
        if areas[number] == 0:
            summary.skip("no pixel inside the image", inst.source)
            continue
        rows, cols = inst.mask.shape
        window = labels[inst.category][inst.top : inst.top + rows, inst.left : inst.left + cols]
        kept = int(np.count_nonzero(window[inst.mask] == number + 1))
        if kept == 0:
            summary.skip("covered by smaller cells of its class", inst.source)
        elif kept < areas[number]:
            summary.trimmed += 1
    return {k: v for k, v in labels.items() if v.any()}
