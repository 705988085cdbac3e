"""Figures for the report: which images to draw, their predictions and ground truth, one PNG.

The drawing itself is in :mod:`cellseg_d2.inference.figures`; this module ties an id map (a
test set's, or the validation images of a dataset root) to the images, their ground-truth
masks and the predictions, and writes the figure.

NOTE: the validation images of a dataset root are listed without converting or touching the
dataset's conversion cache (``<root>/.cellseg_cache/``, which training owns): the folder scan
gives the images and the COCO ids, the TIFF headers the sizes, and the class names come from
the caller (the config's ``DATASETS.CLASS_NAMES``) or, read only, from the names the cache
recorded when training converted the dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cellseg_d2.data.convert import TRAIN_JSON_NAME
from cellseg_d2.data.io import read_image, read_image_size
from cellseg_d2.data.splits import split_of
from cellseg_d2.data.validate import scan_dataset
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.scoring import ground_truth_folder, read_ground_truth_instances
from cellseg_d2.inference.figures import compose_figure, render_comparison, write_png
from cellseg_d2.utils.files import parse_json
from cellseg_d2.utils.layout import (
    CACHE_DIR,
    DEFAULT_CLASS_NAMES,
    IMAGE_FILE_NAME,
    TRAIN_DIR,
    check_class_names,
)

__all__ = [
    "recorded_class_names",
    "recorded_train_settings",
    "validation_id_map",
    "visualize_predictions",
]

logger = logging.getLogger(__name__)


def _draw_row(
    image_dir: str | os.PathLike,
    entry: dict,
    predictions: list[dict],
    gt_dir: str | os.PathLike | None,
    score_thresh: float,
    style: str,
    class_names: Sequence[str],
) -> np.ndarray:
    """Read one id-map image (and its ground truth) and draw its row; errors name the file."""
    path = Path(image_dir) / entry["file_name"]
    image = read_image(path)
    if image.shape[:2] != (entry["height"], entry["width"]):
        raise CellDataError(
            f"{path}: image is {image.shape[0]}x{image.shape[1]} but the id map says "
            f"{entry['height']}x{entry['width']}"
        )
    ground_truth = None
    if gt_dir is not None:
        folder = ground_truth_folder(gt_dir, entry["file_name"])
        ground_truth = read_ground_truth_instances(folder, entry["height"], entry["width"])
    try:
        return render_comparison(
            image, predictions, ground_truth, score_thresh, style=style, class_names=class_names
        )
    except ValueError as exc:
        raise CellDataError(f"{path} (image_id {entry['id']}): {exc}") from exc


def visualize_predictions(
    image_dir: str | os.PathLike,
    id_map_entries: list[dict],
    predictions_by_image: Mapping[int, list[dict]],
    output: str | os.PathLike,
    gt_dir: str | os.PathLike | None = None,
    num_images: int = 4,
    score_thresh: float = 0.5,
    style: str = "boxes",
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> np.ndarray:
    """Draw the first ``num_images`` images of an id map with their predictions into one PNG.

    Why the id map drives it: it ties each ``image_id`` to a file and a size, whatever produced
    the predictions (a results file, or a model run through a predictor).

    Args:
        image_dir: folder the map's ``file_name`` values are relative to (``test_release/``).
        id_map_entries: ``[{file_name, id, height, width}]``; images are taken in id order.
        predictions_by_image: ``{image_id: detections}`` in submission format; an image missing
            here is drawn without detections.
        output: the PNG to write.
        gt_dir: folder of ground-truth mask folders (``test_gt/``, or a dataset root ``train/``
            for validation images; see :func:`~cellseg_d2.evaluation.scoring.ground_truth_folder`)
            for a three-panel figure, or None.
        num_images: number of rows (fewer when the map is shorter).
        score_thresh: smallest prediction score drawn.
        style: ``boxes`` or ``outlines`` (see
            :func:`~cellseg_d2.inference.figures.render_comparison`).
        class_names: names of category ids 1..N (``DATASETS.CLASS_NAMES``).

    Returns:
        The figure written, RGB uint8.

    Raises:
        CellDataError: an unreadable image, an image whose size differs from the map, a mask
            that does not fit its image, or unreadable ground truth; the message names the file.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    entries = sorted(id_map_entries, key=lambda entry: entry["id"])[:num_images]
    if not entries:
        raise CellDataError("the id map lists no image to draw")
    rows = [
        _draw_row(
            image_dir,
            entry,
            predictions_by_image.get(entry["id"], []),
            gt_dir,
            score_thresh,
            style,
            class_names,
        )
        for entry in entries
    ]
    figure = compose_figure(rows)
    write_png(figure, output)
    return figure


def recorded_train_settings(root: str | os.PathLike) -> dict | None:
    """The settings the training cache of ``root`` was converted with, read only.

    Why: a tool that only looks at a dataset (the figures) must follow the settings training
    used (class names, ``min_area``) without rebuilding, or ever writing, the cache training
    owns. The cache records them in ``info["cellseg"]``.

    Returns:
        ``info["cellseg"]`` of ``<root>/.cellseg_cache/instances_train.json`` (``class_names``,
        ``min_area``, ``fingerprint``, ...), or None when there is no such file or it is not a
        readable cache (logged).
    """
    path = Path(root) / CACHE_DIR / TRAIN_JSON_NAME
    if not path.is_file():
        return None
    try:
        coco = parse_json(path.read_bytes(), str(path))
    except (OSError, CellDataError) as exc:
        logger.warning("%s: unreadable (%s); its recorded settings are not used", path, exc)
        return None
    info = coco.get("info") if isinstance(coco, dict) else None
    settings = info.get("cellseg") if isinstance(info, dict) else None
    return settings if isinstance(settings, dict) else None


def recorded_class_names(root: str | os.PathLike) -> tuple[str, ...]:
    """The class names training converted ``root`` with (read only from its cache), else the
    default four.

    Raises:
        CellDataError: the cache records names that are not a list of distinct strings (the
            message names the cache file).
    """
    settings = recorded_train_settings(root) or {}
    if "class_names" not in settings:
        return DEFAULT_CLASS_NAMES
    path = Path(root) / CACHE_DIR / TRAIN_JSON_NAME
    names = check_class_names(settings["class_names"], key=f"{path}: class_names")
    logger.info("Class names of %s from its training cache: %s", root, ", ".join(names))
    return names


def validation_id_map(
    root: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    fold: int | None = None,
    num_folds: int | None = None,
    class_names: Sequence[str] | None = None,
) -> list[dict]:
    """Id-map entries for the validation images of a dataset root, for drawing them with their
    ground truth (``train/`` is then both the image folder and the ground-truth folder).

    The split is the one training uses (:func:`~cellseg_d2.data.splits.split_of`, the same
    fraction, seed and folds), so the figure shows exactly the images the model was validated
    on; ids are the COCO image ids the converter gives (1..N in the scan's folder order), so
    the evaluator's predictions on the split match them. Nothing is converted or written: the
    scan lists the folders, the TIFF headers give the sizes.

    Args:
        root: dataset root holding ``train/``.
        val_fraction: ``DATASETS.VAL_FRACTION`` (ignored with folds).
        seed: ``DATASETS.SPLIT_SEED``.
        fold: ``DATASETS.FOLD``, with ``num_folds``.
        num_folds: ``DATASETS.NUM_FOLDS``; None (or 0) for a fraction split.
        class_names: the dataset's class names (a ``classK.tif`` beyond them is an error); None
            reads the ones training recorded in the cache (:func:`recorded_class_names`).

    Raises:
        CellDataError: no training images, or a layout problem of the scan, naming the file.
        ValueError: invalid split arguments.
    """
    if class_names is None:
        class_names = recorded_class_names(root)
    files = scan_dataset(root, check_class_names(class_names))
    if not files.train:
        raise CellDataError(f"{Path(root) / TRAIN_DIR}: no training images")
    entries = []
    for image_id, folder in enumerate(files.train, 1):
        if split_of(folder.name, val_fraction, seed, fold, num_folds or None) != "val":
            continue
        height, width = read_image_size(folder.image)
        entries.append(
            {
                "file_name": f"{folder.name}/{IMAGE_FILE_NAME}",
                "id": image_id,
                "height": height,
                "width": width,
            }
        )
    return entries
