"""``prepare_dataset``'s work: validate a dataset root, build (or confirm) its caches, report.

Why apart from the conversion (:mod:`cellseg_d2.data.convert`): the report (instances per class,
images without cells, layout warnings, strict mode) is for a person at a terminal; training and
evaluation only need the caches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cellseg_d2.data.convert import cached_test_coco, cached_train_coco
from cellseg_d2.data.limits import DEFAULT_MAX_INSTANCES_PER_IMAGE
from cellseg_d2.data.validate import DEFAULT_MIN_IMAGE_SIZE, raise_if_strict, scan_dataset
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES, check_class_names

__all__ = ["DatasetSummary", "format_summary", "prepare_cell_dataset"]


@dataclass
class DatasetSummary:
    """What :func:`prepare_cell_dataset` found, for the tool's report.

    Attributes:
        train_images: number of training images.
        empty_images: folder names of training images without any kept instance.
        instances_per_class: ``{class name: n}`` over all training images, in class order.
        dropped_small: instances dropped for having fewer than ``min_area`` pixels.
        test_images: number of test images, or None without a test set.
        warnings: the layout warnings of :func:`~cellseg_d2.data.validate.scan_dataset`.
        cache_files: the COCO JSON files the loaders read.
    """

    train_images: int = 0
    empty_images: list[str] = field(default_factory=list)
    instances_per_class: dict[str, int] = field(default_factory=dict)
    dropped_small: int = 0
    test_images: int | None = None
    warnings: list[str] = field(default_factory=list)
    cache_files: list[Path] = field(default_factory=list)


def prepare_cell_dataset(
    root: str | os.PathLike,
    min_area: int = 4,
    min_size: int = DEFAULT_MIN_IMAGE_SIZE,
    strict: bool = False,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    max_instances: int = DEFAULT_MAX_INSTANCES_PER_IMAGE,
) -> DatasetSummary:
    """Validate a dataset root and build (or confirm) its caches; the work of prepare_dataset.

    Every pixel is checked as the cache is built; a fresh cache means the same files passed
    before, so they are not decoded again.

    Args:
        root: dataset root.
        min_area: instances with fewer pixels are dropped.
        min_size: smallest accepted image side in pixels.
        strict: treat layout warnings (e.g. an image without masks) as errors.
        class_names: name K is the class of ``classK.tif``.
        max_instances: most instance ids per image, all masks together (see
            :func:`~cellseg_d2.data.limits.check_instance_count`).

    Returns:
        Counts and warnings for the report.

    Raises:
        CellDataError: bad data (naming the file), or any warning when ``strict``.
    """
    class_names = check_class_names(class_names)
    files = scan_dataset(root, class_names)
    raise_if_strict(files.warnings, strict)
    summary = DatasetSummary(warnings=list(files.warnings))
    if files.train:
        coco, path = cached_train_coco(files, min_area, min_size, class_names, max_instances)
        summary.cache_files.append(path)
        _count_training(coco, summary)
    if files.test_images is not None:
        coco, path = cached_test_coco(files, min_size, class_names)
        summary.cache_files.append(path)
        summary.test_images = len(coco["images"])
    return summary


def _count_training(coco: dict, summary: DatasetSummary) -> None:
    """Fill the training counts of ``summary`` from the training COCO dict."""
    summary.train_images = len(coco["images"])
    counts = dict.fromkeys((c["id"] for c in coco["categories"]), 0)
    annotated = set()
    for annotation in coco["annotations"]:
        counts[annotation["category_id"]] += 1
        annotated.add(annotation["image_id"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    summary.instances_per_class = {names[k]: n for k, n in counts.items()}
    summary.empty_images = [i["folder"] for i in coco["images"] if i["id"] not in annotated]
    summary.dropped_small = coco["info"]["cellseg"]["dropped_small"]


def format_summary(summary: DatasetSummary) -> str:
    """A short human-readable report of :func:`prepare_cell_dataset`'s result.

    Why a function of its own: the tool prints it and tests read it, so the wording lives in one
    place.
    """
    lines = [
        f"training images:   {summary.train_images}",
        f"  without cells:   {len(summary.empty_images)}",
        f"  instances:       {sum(summary.instances_per_class.values())}",
    ]
    lines += [f"    {name}:{count:>14}" for name, count in summary.instances_per_class.items()]
    lines.append(f"  dropped (small): {summary.dropped_small}")
    test = "none" if summary.test_images is None else str(summary.test_images)
    lines.append(f"test images:       {test}")
    lines.append(f"warnings:          {len(summary.warnings)}")
    lines += [f"  {warning}" for warning in summary.warnings]
    lines += [f"cache: {path}" for path in summary.cache_files]
    return "\n".join(lines)
