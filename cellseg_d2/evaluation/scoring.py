"""Score a submission locally the way a COCO-style leaderboard does: mask AP and box AP.

Ground truth is read from folders of ``classK.tif`` instance-label images (``test_gt/<stem>/``
from the synthetic generator, or ``train/<folder>/`` for validation images) and turned into a
COCO dict with the same RLE helpers the converter uses, so training, evaluation and scoring see
identical masks.

Figures are in percent (0..100), detectron2's convention: a perfect submission scores 100.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cellseg_d2.data.io import read_instance_mask
from cellseg_d2.data.rle import check_rle, label_image_to_instances
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import (
    DEFAULT_CLASS_NAMES,
    class_index_of,
    class_name,
    coco_categories,
)

__all__ = [
    "IOU_TYPES",
    "evaluate_submission",
    "format_scores",
    "ground_truth_as_results",
    "ground_truth_folder",
    "load_ground_truth_coco",
    "read_ground_truth_instances",
    "write_scores_json",
]

logger = logging.getLogger(__name__)

#: The COCOeval modes run, in the order of the result dict.
IOU_TYPES: tuple[str, ...] = ("segm", "bbox")
#: pycocotools' default detection caps; the last one is raised to the submission's maximum.
_COCO_MAX_DETS = (1, 10, 100)


def ground_truth_folder(gt_dir: str | os.PathLike, file_name: str) -> Path:
    """The folder holding the ``classK.tif`` masks of the image ``file_name`` of an id map.

    Why two rules: a test image ``<stem>.tif`` has its masks in ``gt_dir/<stem>/``, while a
    training image ``<folder>/image.tif`` keeps them beside it, in ``gt_dir/<folder>/``. With
    the second rule an id map listing validation images (for example the ``images`` of a
    ``val`` COCO JSON, ``train/<folder>/image.tif``) works with ``gt_dir`` = the dataset root.
    """
    name = PurePosixPath(file_name)
    parent = name.parent
    return Path(gt_dir) / (parent if str(parent) != "." else name.stem)


def read_ground_truth_instances(folder: str | os.PathLike, height: int, width: int) -> list[dict]:
    """Read the ``classK.tif`` masks of one image as instances in submission format.

    Why submission format (``category_id`` 1..4, ``segmentation`` RLE, ``bbox``, ``area``):
    scoring and the figures then treat ground truth and predictions alike.

    Args:
        folder: holds ``class1.tif``..``classK.tif`` (any K), each optional (absent = no such
            cell).
        height: the image height the masks must have.
        width: the image width the masks must have.

    Returns:
        One dict per instance, classes in order, ids sorted within a class. A missing folder
        gives an empty list and a warning (the image then has no cell).

    Raises:
        CellDataError: an unreadable mask, or one whose size differs from ``height x width``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        logger.warning("%s: no ground-truth folder; the image counts as one without cells", folder)
        return []
    instances = []
    found = {class_index_of(path.name): path for path in folder.glob("class*.tif")}
    found.pop(None, None)
    for index, path in sorted(found.items()):
        category_id = index + 1
        labels = read_instance_mask(path)
        if labels.shape != (height, width):
            raise CellDataError(
                f"{path}: mask is {labels.shape[0]}x{labels.shape[1]} but the id map says "
                f"{height}x{width}"
            )
        for instance in label_image_to_instances(labels):
            instances.append(
                {
                    "category_id": category_id,
                    "segmentation": instance.rle,
                    "bbox": instance.bbox,
                    "area": instance.area,
                }
            )
    return instances


def load_ground_truth_coco(
    gt_dir: str | os.PathLike,
    id_map_entries: list[dict],
    class_names: Sequence[str] | None = None,
) -> dict:
    """Build the COCO ground-truth dict of the images of an id map.

    Why from the id map: the submission's ``image_id`` values are the map's ids, so the ground
    truth must use exactly those ids and sizes. Why names: the category names label every
    per-class figure (``AP-<name>``, the PQ rows), so the scores read ``AP-epithelial`` rather
    than ``AP-class1`` when the names are known.

    Args:
        gt_dir: folder of per-image mask folders (see :func:`ground_truth_folder`).
        id_map_entries: ``[{file_name, id, height, width}]``.
        class_names: name of ``classK.tif`` at index K - 1 (``--class-names``); None, or a
            class beyond them, falls back to ``classK``.

    Returns:
        ``{"images", "annotations", "categories"}``; categories 1..K named by ``class_names``
        (K the highest class found, at least the number of names, or 4 without names),
        annotations with ``iscrowd`` 0 and every instance kept (no minimum area).

    Raises:
        CellDataError: ``gt_dir`` is missing or holds the folder of none of the images, or a
            mask is unreadable or of the wrong size.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise CellDataError(f"{gt_dir}: ground-truth folder not found")
    folders = [ground_truth_folder(gt_dir, entry["file_name"]) for entry in id_map_entries]
    if id_map_entries and not any(folder.is_dir() for folder in folders):
        raise CellDataError(
            f"{gt_dir}: holds no mask folder for any image of the id map, e.g. {folders[0]}"
        )
    images, annotations = [], []
    for entry, folder in zip(id_map_entries, folders):
        images.append({key: entry[key] for key in ("id", "file_name", "height", "width")})
        for instance in read_ground_truth_instances(folder, entry["height"], entry["width"]):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": entry["id"], "iscrowd": 0, **instance}
            )
    logger.info("Ground truth: %d instances in %d images", len(annotations), len(images))
    known = [] if class_names is None else list(class_names)
    fewest = len(known) if class_names is not None else len(DEFAULT_CLASS_NAMES)
    num_classes = max([fewest, *(a["category_id"] for a in annotations)])
    names = [class_name(k, known) for k in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": coco_categories(names)}


def ground_truth_as_results(gt_coco: dict, score: float = 1.0) -> list[dict]:
    """Turn ground truth into a submission: the oracle that must score 100.

    Why: it checks the whole chain (writer, validator, scorer, leaderboard format) without a
    model, and perturbed copies of it show how each kind of error costs AP.

    Args:
        gt_coco: from :func:`load_ground_truth_coco`.
        score: the confidence given to every detection.

    Returns:
        One detection per annotation, in submission format, boxes as floats.
    """
    return [
        {
            "image_id": annotation["image_id"],
            "category_id": annotation["category_id"],
            "bbox": [float(value) for value in annotation["bbox"]],
            "score": float(score),
            "segmentation": annotation["segmentation"],
        }
        for annotation in gt_coco["annotations"]
    ]


def _build_coco(dataset: dict) -> COCO:
    """A pycocotools COCO object from an in-memory dict, without its chatter on stdout."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _average_precision(precision: np.ndarray) -> float:
    """Mean of the valid (> -1) entries in percent; NaN when none (no ground truth)."""
    valid = precision[precision > -1]
    return float(valid.mean() * 100.0) if valid.size else math.nan


def _evaluate(gt: COCO, results: list[dict], iou_type: str, max_dets: int) -> dict[str, float]:
    """Run COCOeval for one IoU type and read AP, AP50, AP75 and per-class AP at ``max_dets``."""
    # Only the fields this IoU type needs. NOTE: with a ``bbox`` present, loadRes takes the box
    # area as the detection's area even for masks (detectron2 drops the box for the same reason).
    geometry = "segmentation" if iou_type == "segm" else "bbox"
    detections = [
        {key: result[key] for key in ("image_id", "category_id", "score", geometry)}
        for result in results
    ]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        if detections:
            dt = gt.loadRes(detections)
        else:
            dt = _build_coco({**gt.dataset, "annotations": []})
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.maxDets = [*_COCO_MAX_DETS[:2], max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    logger.debug("pycocotools (%s):\n%s", iou_type, log.getvalue())
    # precision: [IoU thresholds T, recall R, categories K, area ranges A, maxDets M]; area
    # range 0 is "all" and the last maxDets is ours.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    thresholds = evaluator.params.iouThrs
    scores = {
        "AP": _average_precision(precision),
        "AP50": _average_precision(precision[np.isclose(thresholds, 0.5)]),
        "AP75": _average_precision(precision[np.isclose(thresholds, 0.75)]),
    }
    for k, category_id in enumerate(evaluator.params.catIds):
        name = gt.cats[category_id]["name"]
        scores[f"AP-{name}"] = _average_precision(precision[:, :, k])
    return scores


def evaluate_submission(gt_coco: dict, results: list[dict]) -> dict[str, dict[str, float]]:
    """Mask and box AP of a (validated) submission against COCO ground truth.

    Why not ``COCOeval.summarize()``: it hard-codes 100 detections for its AP figures, while a
    dense image holds several hundred cells; capped at 100, a perfect submission would score
    well below 100. Here the detection cap is ``max(100, most detections in one image)`` and AP
    is read from the accumulated precision at that cap. (pycocotools applies the cap per image
    and class, so the per-image maximum is always enough.)

    Args:
        gt_coco: from :func:`load_ground_truth_coco`.
        results: detections in submission format, e.g. checked by
            :func:`~cellseg_d2.evaluation.submission_check.validate_submission`.

    Returns:
        ``{"segm": {...}, "bbox": {...}}``, each with ``AP``, ``AP50``, ``AP75`` (mean over the
        classes that have ground truth) and ``AP-<name>`` per category of ``gt_coco`` (its
        names, see :func:`load_ground_truth_coco`), in percent; NaN for a class without ground
        truth. With no detections at all every AP is 0.

    Raises:
        CellDataError: a detection names an image that is not in the ground truth, or its mask
            is a corrupt RLE (:func:`~cellseg_d2.data.rle.check_rle`; pycocotools would score
            the garbage it decodes silently).
    """
    for index, result in enumerate(results):
        try:
            check_rle(result["segmentation"])
        except ValueError as exc:
            raise CellDataError(
                f"result {index} (image_id {result['image_id']}): corrupt segmentation: {exc}"
            ) from exc
    # COCOeval writes an "ignore" flag into every ground-truth annotation: give it copies.
    gt = _build_coco({**gt_coco, "annotations": [dict(a) for a in gt_coco["annotations"]]})
    per_image = Counter(result["image_id"] for result in results)
    unknown = sorted(set(per_image) - set(gt.getImgIds()))
    if unknown:
        raise CellDataError(
            f"{len(unknown)} image id(s) of the submission are not in the ground truth, e.g. "
            f"{unknown[0]}"
        )
    max_dets = max(_COCO_MAX_DETS[-1], max(per_image.values(), default=0))
    logger.info(
        "Evaluating %d detections on %d images (maxDets %d)",
        len(results),
        len(gt.getImgIds()),
        max_dets,
    )
    return {iou_type: _evaluate(gt, results, iou_type, max_dets) for iou_type in IOU_TYPES}


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one row per figure, one column per IoU type.

    Why a table: mask and box AP side by side show at a glance whether the masks or the boxes
    lose points.
    """
    iou_types = list(scores)
    metrics = list(scores[iou_types[0]]) if iou_types else []
    width = max((len(metric) for metric in metrics), default=6)
    lines = [f"{'metric':<{width}}" + "".join(f"{iou_type:>9}" for iou_type in iou_types)]
    for metric in metrics:
        values = "".join(f"{scores[iou_type][metric]:>9.2f}" for iou_type in iou_types)
        lines.append(f"{metric:<{width}}{values}")
    return "\n".join(lines)


def write_scores_json(scores: dict[str, dict[str, float]], path: str | os.PathLike) -> None:
    """Save the scores as JSON atomically, NaN (class without ground truth) written as null.

    Why null: ``NaN`` is not JSON, and most readers other than Python's reject it.
    """
    cleaned = {
        iou_type: {metric: None if math.isnan(value) else value for metric, value in values.items()}
        for iou_type, values in scores.items()
    }
    with atomic_write(path, "w") as handle:
        json.dump(cleaned, handle, indent=2)
        handle.write("\n")
