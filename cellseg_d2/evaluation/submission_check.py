"""Checking a submission against the id map before the server (or a scorer) sees it.

The validator checks what would make the server reject or silently mis-score a submission, in one
pass plus one batched pycocotools call, so it stays fast for hundreds of thousands of detections.
The submission's format is described in :mod:`cellseg_d2.evaluation.submission`.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
from pycocotools import mask as mask_util

from cellseg_d2.data.rle import check_rle
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES

__all__ = [
    "BBOX_IMAGE_TOLERANCE",
    "BBOX_MASK_TOLERANCE",
    "SubmissionReport",
    "format_report",
    "require_valid_submission",
    "validate_submission",
]

logger = logging.getLogger(__name__)

#: A box may reach this many pixels beyond the image border (rounding of float boxes).
BBOX_IMAGE_TOLERANCE = 1.0
#: A box may differ from its mask's tight box by this many pixels on each coordinate.
BBOX_MASK_TOLERANCE = 2.0
_REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score", "segmentation")
# Compressed COCO RLE strings use the characters chr(48)..chr(111) only.
_RLE_CHARACTERS = re.compile(r"[0-o]+")


@dataclass
class SubmissionReport:
    """What :func:`validate_submission` found.

    Attributes:
        num_results: number of entries in the submission.
        detections_per_image: ``{image_id: count}`` for every image of the id map (0 when it has
            no detection); entries with an unknown ``image_id`` are not counted.
        detections_per_class: ``{category_id: count}`` for categories 1..4.
        empty_masks: detections whose mask has no pixel (legal, but they can never match).
        violations: one message per problem, naming the entry's index in the list.
    """

    num_results: int
    detections_per_image: dict[int, int]
    detections_per_class: dict[int, int]
    empty_masks: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the submission has no violation."""
        return not self.violations


def _is_int(value: object) -> bool:
    """True for a JSON integer (bool is an int subclass in Python but not a valid id)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """True for a finite JSON number (not bool); an integer too large for a float is not one."""
    if not isinstance(value, Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_entry(
    index: int, entry: object, sizes: dict[int, tuple[int, int]], num_classes: int
) -> list[str]:
    """The violations of one entry, except the mask-box comparison (done in a batch)."""
    if not isinstance(entry, dict):
        return [f"result {index}: not a JSON object: {entry!r:.60}"]
    missing = [key for key in _REQUIRED_KEYS if key not in entry]
    if missing:
        return [f"result {index}: missing key(s) {', '.join(missing)}"]
    problems = []
    image_id, category_id = entry["image_id"], entry["category_id"]
    size = sizes.get(image_id) if _is_int(image_id) else None
    if size is None:
        problems.append(f"result {index}: image_id {image_id!r} is not in the id map")
    if not _is_int(category_id) or not 1 <= category_id <= num_classes:
        problems.append(f"result {index}: category_id {category_id!r} is not in 1..{num_classes}")
    score = entry["score"]
    if not _is_number(score) or not 0.0 <= score <= 1.0:
        problems.append(f"result {index}: score {score!r} is not a finite number in [0, 1]")
    problems += _check_segmentation(index, image_id, entry["segmentation"], size)
    problems += _check_bbox(index, image_id, entry["bbox"], size)
    return problems


def _check_segmentation(
    index: int, image_id: object, segmentation: object, size: tuple[int, int] | None
) -> list[str]:
    """The violations of one entry's RLE: its form, its runs, and its size against the image's
    (``size`` is None when the image id is unknown)."""
    if not isinstance(segmentation, dict) or not {"size", "counts"} <= segmentation.keys():
        return [f"result {index}: segmentation must be {{'size', 'counts'}} (COCO RLE)"]
    problems = []
    counts, rle_size = segmentation["counts"], segmentation["size"]
    if not isinstance(counts, str) or not _RLE_CHARACTERS.fullmatch(counts):
        problems.append(
            f"result {index}: segmentation counts must be a compressed COCO RLE string, "
            f"got {type(counts).__name__}"
        )
    size_ok = (
        isinstance(rle_size, list)
        and len(rle_size) == 2
        and all(_is_int(v) and 0 <= v < 2**31 for v in rle_size)
    )
    if size_ok and isinstance(counts, str) and _RLE_CHARACTERS.fullmatch(counts):
        try:
            check_rle(segmentation)
        except ValueError as exc:
            problems.append(
                f"result {index}: segmentation of image_id {image_id!r} is corrupt: {exc}"
            )
    if size is not None and not (size_ok and rle_size == list(size)):
        problems.append(
            f"result {index}: segmentation size {rle_size!r} differs from image "
            f"{image_id}'s [height, width] {list(size)}"
        )
    return problems


def _check_bbox(
    index: int, image_id: object, bbox: object, size: tuple[int, int] | None
) -> list[str]:
    """The violations of one entry's box: four finite numbers, inside the image (when known)."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return [f"result {index}: bbox must be 4 finite numbers [x, y, w, h]: {bbox!r}"]
    if size is None:
        return []
    x, y, w, h = bbox
    height, width = size
    tol = BBOX_IMAGE_TOLERANCE
    if w < 0 or h < 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return [
            f"result {index}: bbox {bbox} is not inside image {image_id} "
            f"({width}x{height} px, tolerance {tol:g} px)"
        ]
    return []


def validate_submission(
    results: list, id_map_entries: list[dict], num_classes: int = len(DEFAULT_CLASS_NAMES)
) -> SubmissionReport:
    """Check a results list against the id map and count detections per image and class.

    Why: CodaBench gives little feedback; a wrong id, a mask of the wrong size or a box in the
    wrong convention costs a submission slot or, worse, scores silently low. The checks:
    ``image_id`` in the map; ``category_id`` in 1..``num_classes``; ``score`` finite in [0, 1];
    the RLE's ``size`` equal to the image's ``[height, width]`` and its ``counts`` a compressed
    string; ``bbox`` four finite numbers inside the image (:data:`BBOX_IMAGE_TOLERANCE`) and within
    :data:`BBOX_MASK_TOLERANCE` px of the mask's tight box; the RLE's runs decodable, none
    negative, and adding up to exactly ``height * width`` (:func:`~cellseg_d2.data.rle.check_rle`,
    which reads the run lengths without decoding pixels), so a corrupt string such as
    ``"oooooooooo1"`` is reported instead of scoring 0 silently.

    NOTE: detectron2's raw ``bbox`` is the regressed box, usually a few pixels larger than the
    pasted mask; a predictor must recompute boxes from the masks to pass the box-mask check.

    Args:
        results: the list from :func:`read_submission`.
        id_map_entries: ``[{file_name, id, height, width}]`` from the id map.
        num_classes: the number of classes (``len(DATASETS.CLASS_NAMES)``; 4 for MoNuSAC).

    Returns:
        The report; ``report.ok`` is False when any violation was found.
    """
    sizes = {entry["id"]: (entry["height"], entry["width"]) for entry in id_map_entries}
    per_image = dict.fromkeys(sorted(sizes), 0)
    per_class = dict.fromkeys(range(1, num_classes + 1), 0)
    found: list[tuple[int, str]] = []  # (entry index, message), sorted by index at the end
    checked: list[int] = []  # entries whose mask box is compared in one batch below
    for index, entry in enumerate(results):
        problems = _check_entry(index, entry, sizes, num_classes)
        found.extend((index, message) for message in problems)
        if not isinstance(entry, dict):
            continue
        image_id, category_id = entry.get("image_id"), entry.get("category_id")
        if _is_int(image_id) and image_id in per_image:  # _is_int first: a list is unhashable
            per_image[image_id] += 1
        if _is_int(category_id) and category_id in per_class:
            per_class[category_id] += 1
        if not problems:
            checked.append(index)
    empty = _check_mask_boxes(results, checked, found) if checked else 0
    violations = [message for _, message in sorted(found, key=lambda item: item[0])]
    report = SubmissionReport(
        num_results=len(results),
        detections_per_image=per_image,
        detections_per_class=per_class,
        empty_masks=empty,
        violations=violations,
    )
    logger.info(
        "Checked %d detections on %d images: %d violation(s)",
        len(results),
        len(per_image),
        len(violations),
    )
    return report


def _check_mask_boxes(results: list, checked: list[int], found: list[tuple[int, str]]) -> int:
    """Compare the boxes of the ``checked`` entries with their masks' tight boxes in one batched
    pycocotools call, adding ``(index, message)`` to ``found``; returns the number of empty
    masks among them."""
    rles = []
    for index in checked:
        segmentation = results[index]["segmentation"]
        rles.append({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
    mask_boxes = mask_util.toBbox(rles)
    # NOTE: not mask_util.area(list): pycocotools 2.0.11 overflows on lists above 255 RLEs.
    # A mask is empty exactly when its box has zero width.
    is_empty = mask_boxes[:, 2] == 0
    boxes = np.array([results[index]["bbox"] for index in checked], dtype=np.float64)
    # Compare the box corners: a box may be right in size yet shifted.
    corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    mask_corners = np.concatenate(
        [mask_boxes[:, :2], mask_boxes[:, :2] + mask_boxes[:, 2:]], axis=1
    )
    off = np.abs(corners - mask_corners).max(axis=1)
    for row in np.flatnonzero((off > BBOX_MASK_TOLERANCE) & ~is_empty):
        index = checked[row]
        found.append(
            (
                index,
                f"result {index}: bbox {results[index]['bbox']} differs from the mask's "
                f"tight box {mask_boxes[row].tolist()} by {off[row]:g} px "
                f"(tolerance {BBOX_MASK_TOLERANCE:g} px)",
            )
        )
    return int(is_empty.sum())


def format_report(
    report: SubmissionReport,
    max_violations: int = 20,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> str:
    """Summarize a report in a few lines for the terminal.

    Why a cap: a systematic mistake (say, swapped height and width) repeats on every detection;
    the first few messages tell the story, the count tells the extent.

    Args:
        report: from :func:`validate_submission`.
        max_violations: list at most this many violation messages.
        class_names: the name of category id K is ``class_names[K - 1]``.

    Returns:
        Detection counts per image (min, median, mean, max) and per class, empty masks, and the
        violations.
    """
    counts = list(report.detections_per_image.values())
    with_detections = sum(1 for count in counts if count)
    lines = [f"{report.num_results} detections on {with_detections} of {len(counts)} images"]
    if counts:
        lines.append(
            f"detections per image: min {min(counts)}, median {statistics.median(counts):g}, "
            f"mean {statistics.fmean(counts):.1f}, max {max(counts)}"
        )
    per_class = ", ".join(
        f"{class_names[category_id - 1]} {count}"
        for category_id, count in report.detections_per_class.items()
    )
    lines.append(f"detections per class: {per_class}")
    lines.append(f"empty masks: {report.empty_masks}")
    if report.ok:
        lines.append("violations: none")
    else:
        shown = report.violations[:max_violations]
        lines.append(f"violations: {len(report.violations)}")
        lines.extend(f"  {message}" for message in shown)
        if len(report.violations) > len(shown):
            lines.append(f"  ... and {len(report.violations) - len(shown)} more")
    return "\n".join(lines)


def require_valid_submission(
    results: list,
    id_map_entries: list[dict],
    source: str,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> None:
    """Stop with a :class:`CellDataError` listing the violations when a submission is invalid.

    Scoring or drawing an invalid submission would give numbers or pictures that mean nothing,
    so the tools that consume one check it first.

    Args:
        results: the submission entries.
        id_map_entries: the id map the submission answers.
        source: what to name in the message (usually the submission's path).
        class_names: the classes the submission may use (category ids 1..len).
    """
    report = validate_submission(results, id_map_entries, len(class_names))
    if not report.ok:
        raise CellDataError(
            f"{source}: {len(report.violations)} violation(s)\n"
            f"{format_report(report, class_names=class_names)}"
        )
