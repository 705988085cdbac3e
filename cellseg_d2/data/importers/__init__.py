"""Importers: annotations people already have -> the project's dataset folder.

One module per source format reads images and annotations and yields
:class:`~cellseg_d2.data.importers.common.ImportedImage` items;
:class:`~cellseg_d2.data.importers.layout.DatasetWriter` writes them in the layout of
``datasets/README.md`` (plus ``dataset.json``), all or nothing. :func:`import_dataset` joins
the two and is what ``tools/import_dataset.py`` calls.

Formats (see each module for its rules): ``coco`` (COCO instances JSON: polygons, RLE),
``qupath`` (GeoJSON exported from QuPath), ``labels`` (instance-label images, the Cellpose /
StarDist / napari convention), ``hovernet`` (CoNSeP / Lizard / MoNuSAC ``.mat``), ``pannuke``
(``images.npy`` / ``masks.npy`` folds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from cellseg_d2.data.importers.coco import read_coco
from cellseg_d2.data.importers.common import ClassTable, ImportedImage, ImportOptions, ImportSummary
from cellseg_d2.data.importers.hovernet import read_hovernet
from cellseg_d2.data.importers.labels import read_labels
from cellseg_d2.data.importers.layout import DatasetWriter
from cellseg_d2.data.importers.pannuke import PANNUKE_CLASS_NAMES, read_pannuke
from cellseg_d2.data.importers.qupath import read_qupath
from cellseg_d2.errors import CellDataError

__all__ = ["FORMATS", "ImportOptions", "ImportSummary", "import_dataset"]

logger = logging.getLogger(__name__)

Reader = Callable[..., Iterator[ImportedImage]]

#: Format name -> (reader, class names it knows without --class-names, its keyword options).
FORMATS: dict[str, tuple[Reader, tuple[str, ...] | None, frozenset[str]]] = {
    "coco": (read_coco, None, frozenset({"images"})),
    "qupath": (read_qupath, None, frozenset({"images", "nucleus"})),
    "labels": (read_labels, None, frozenset({"labels", "class_dir"})),
    "hovernet": (read_hovernet, None, frozenset({"images"})),
    "pannuke": (read_pannuke, PANNUKE_CLASS_NAMES, frozenset()),
}


def _split_options(
    source_format: str, format_options: dict[str, object], has_test: bool
) -> dict[str, dict[str, object]]:
    """The reader's keyword options per split (``train``, ``test``), refusing options the format
    does not take and ``test_images`` without a test source.

    Folder options (``images``) apply to the training split; the test split gets the flags and
    ``test_images`` as its ``images``.
    """
    _, _, known = FORMATS[source_format]
    test_images = format_options.get("test_images")
    given = {
        k: v for k, v in format_options.items() if k != "test_images" and v not in (None, False)
    }
    unknown = sorted(k for k in given if k not in known)
    if test_images is not None and "images" not in known:
        unknown.append("test_images")
    if unknown:
        names = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise CellDataError(f"--from {source_format} does not take {names}")
    if test_images is not None and not has_test:
        raise CellDataError("--test-images needs a test source (--test)")
    split_options = {
        "train": given,
        "test": {k: v for k, v in given.items() if isinstance(v, bool)},
    }
    if test_images is not None:
        split_options["test"]["images"] = Path(test_images)
    return split_options


def import_dataset(
    source_format: str,
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: ImportOptions | None = None,
    *,
    test: str | os.PathLike | None = None,
    overwrite: bool = False,
    **format_options: object,
) -> ImportSummary:
    """Import ``source`` (and ``test``, as the test split) into a new dataset root ``output``.

    Why one entry point: every format then shares the all-or-nothing writing, the class rules,
    the report and ``dataset.json``.

    Args:
        source_format: one of :data:`FORMATS`.
        source: the training source (file or folder, as the format's module says).
        output: the dataset root to create.
        options: class names, the unclassified rule and the pixel size (None: defaults).
        test: a second source of the same format whose images become ``test_release/`` with
            the id map and ``test_gt/``. Format options that name folders (``images``, ...)
            apply to the training source only; ``test_images`` is the test source's image
            folder.
        overwrite: replace a non-empty ``output``.
        **format_options: the format's own options (e.g. ``images=Path``) and ``test_images``;
            options another format takes are refused when set.

    Returns:
        What was read, written and skipped.

    Raises:
        CellDataError: bad input, naming the file and object; nothing is left in ``output``.
    """
    if source_format not in FORMATS:
        raise CellDataError(f"unknown format {source_format!r}; one of {sorted(FORMATS)}")
    options = options if options is not None else ImportOptions()
    reader, default_names, _ = FORMATS[source_format]
    split_options = _split_options(source_format, format_options, test is not None)
    classes = ClassTable(options, default_names)
    summary = ImportSummary(source_format)
    sources = [Path(source)] + ([Path(test)] if test is not None else [])
    for split_option in split_options.values():  # folders the options name (images=...)
        sources += [Path(v) for v in split_option.values() if isinstance(v, (str, os.PathLike))]
    with DatasetWriter(output, classes, summary, overwrite=overwrite, sources=sources) as writer:
        for split, path in (("train", Path(source)), ("test", test)):
            if path is None:
                continue
            logger.info("reading %s (%s split) as %s", path, split, source_format)
            for item in reader(Path(path), classes, summary, **split_options[split]):
                writer.add(split, item.name, item.image, item.labels, item.where)
        result = writer.commit(options.pixel_size_um, overwrite)
    logger.info(
        "imported %d train and %d test images; cells per class %s; skipped %d object(s)",
        result.images["train"],
        result.images["test"],
        result.cells,
        sum(result.skipped.values()),
    )
    return result
