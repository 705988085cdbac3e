"""The CodaBench submission: read, write and check a COCO results list.

A submission is a JSON list with one entry per detection::

    {"image_id": int, "category_id": 1..4, "bbox": [x, y, w, h], "score": float,
     "segmentation": {"size": [h, w], "counts": str}}

``image_id`` comes from ``test_image_name_to_ids.json`` (the id map) and ``bbox`` is in original
image pixels. CodaBench takes a ``.zip`` holding the list as ``test-results.json``; the plain JSON
is what local tools and detectron2's ``coco_instances_results.json`` use. Both are read alike.

The validator checks what would make the server reject or silently mis-score a submission, in one
pass plus one batched pycocotools call, so it stays fast for hundreds of thousands of detections.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import IO

import numpy as np
from pycocotools import mask as mask_util

from cellseg_d2.data.limits import (
    DEFAULT_MAX_SUBMISSION_MB,
    MAX_SUBMISSION_MB_ENV,
    max_submission_bytes,
)
from cellseg_d2.data.rle import check_rle
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission_read import RESULTS_FILE_NAME, read_submission
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES

__all__ = [
    "BBOX_IMAGE_TOLERANCE",
    "BBOX_MASK_TOLERANCE",
    "DEFAULT_MAX_SUBMISSION_MB",
    "MAX_SUBMISSION_MB_ENV",
    "RESULTS_FILE_NAME",
    "SubmissionReport",
    "format_report",
    "group_by_image",
    "max_submission_bytes",
    "read_submission",
    "require_valid_submission",
    "validate_submission",
    "encode_results",
    "write_submission",
    "write_submission_parts",
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


def _json_default(value: object) -> object:
    """Turn numpy scalars and arrays (a model's outputs) into plain JSON values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_results(results: Iterable[dict]) -> str:
    """Compact JSON text of a results list, the form the submission file holds.

    Raises:
        ValueError: a value JSON cannot hold faithfully, e.g. a NaN score (which CodaBench's JSON
            parser would reject).
    """
    return json.dumps(list(results), separators=(",", ":"), allow_nan=False, default=_json_default)


def write_submission_parts(parts: Iterable[str], path: str | os.PathLike, zip_output: bool) -> None:
    """Write one submission from JSON list texts (e.g. per-image shards), streaming.

    Why parts: a prediction run over thousands of images keeps its results on disk, one list per
    image (:func:`encode_results`); the submission is their concatenation. Parts are copied one
    at a time into the file (or the zip member), so memory does not grow with the number of
    images. The file appears complete or not at all (temporary name, then rename), so an
    interrupted run never leaves a truncated submission that looks finished.

    Args:
        parts: JSON lists as text; empty lists add nothing.
        path: destination file; its folder is created.
        zip_output: write the zip CodaBench takes instead of plain JSON.

    Raises:
        ValueError: a part that is not a JSON list text.
    """
    path = Path(path)
    if zip_output != (path.suffix.lower() == ".zip"):
        logger.warning("%s: zip_output=%s but the file name says otherwise", path, zip_output)

    def write_list(stream: IO[bytes]) -> None:
        stream.write(b"[")
        first = True
        for part in parts:
            text = part.strip()
            if not (text.startswith("[") and text.endswith("]")):
                raise ValueError(f"not a JSON list: {text[:40]!r}")
            inner = text[1:-1]
            if not inner:
                continue
            if not first:
                stream.write(b",")
            stream.write(inner.encode())
            first = False
        stream.write(b"]")

    with atomic_write(path) as handle:
        if zip_output:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                with archive.open(RESULTS_FILE_NAME, "w", force_zip64=True) as member:
                    write_list(member)
        else:
            write_list(handle)


def write_submission(results: list[dict], path: str | os.PathLike, zip_output: bool) -> None:
    """Write ``results`` as compact JSON, or as a zip holding ``test-results.json``.

    The file appears complete or not at all (see :func:`write_submission_parts`).

    Args:
        results: detections in submission format; numpy numbers are converted.
        path: destination file; its folder is created.
        zip_output: write the zip CodaBench takes instead of plain JSON.

    Raises:
        ValueError: a value JSON cannot hold faithfully, e.g. a NaN score.
    """
    write_submission_parts([encode_results(results)], path, zip_output)
    logger.info("Wrote %d detections to %s", len(results), path)


def group_by_image(results: Iterable[dict]) -> dict[int, list[dict]]:
    """Split a results list into ``{image_id: [detections]}``, keeping the list order.

    Why: drawing and per-image statistics work image by image, while the file is one flat list.
    """
    grouped: dict[int, list[dict]] = {}
    for result in results:
        grouped.setdefault(result["image_id"], []).append(result)
    return grouped


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
    segmentation = entry["segmentation"]
    if not isinstance(segmentation, dict) or not {"size", "counts"} <= segmentation.keys():
        problems.append(f"result {index}: segmentation must be {{'size', 'counts'}} (COCO RLE)")
    else:
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
    bbox = entry["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        problems.append(f"result {index}: bbox must be 4 finite numbers [x, y, w, h]: {bbox!r}")
    elif size is not None:
        x, y, w, h = bbox
        height, width = size
        tol = BBOX_IMAGE_TOLERANCE
        if w < 0 or h < 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            problems.append(
                f"result {index}: bbox {bbox} is not inside image {image_id} "
                f"({width}x{height} px, tolerance {tol:g} px)"
            )
    return problems


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
    empty = 0
    if checked:
        rles = []
        for index in checked:
            segmentation = results[index]["segmentation"]
            rles.append({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
        mask_boxes = mask_util.toBbox(rles)
        # NOTE: not mask_util.area(list): pycocotools 2.0.11 overflows on lists above 255 RLEs.
        # A mask is empty exactly when its box has zero width.
        is_empty = mask_boxes[:, 2] == 0
        boxes = np.array([results[index]["bbox"] for index in checked], dtype=np.float64)
        empty = int(is_empty.sum())
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
