"""The work folder of a streamed prediction run, and the checks every shard passes when read.

A run stores each finished image in ``<main output>.partial/``: ``<image_id>.json`` holds the
image's COCO results and marks it done, ``<image_id>.csv`` its rows of the per-cell table. The
folder outlives a crash, so its files are read later by another process: a shard may be
truncated by a full disk, edited, or copied in from another run. So a shard is never trusted:
:func:`check_coco_shard` and :func:`check_csv_shard` check its form, that it speaks of its own
image only, and that its classes are the run's. With ``--resume`` a bad shard is named, removed
and its image predicted again; during the assembly a bad shard stops the run (exit 2).
``fingerprint.json`` records what made the shards (:func:`prediction_fingerprint`), so that
``--resume`` never mixes results of two different runs.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from detectron2.config import CfgNode

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.export import (
    CELLS_ALL_DETECTIONS,
    CELLS_LABEL_IMAGE,
    CSV_COLUMNS,
    spreadsheet_safe,
)
from cellseg_d2.utils.files import atomic_write, parse_json, sha256_file

__all__ = [
    "FINGERPRINT_FILE",
    "PredictionShards",
    "check_coco_shard",
    "check_csv_shard",
    "prediction_fingerprint",
    "run_fingerprint",
    "skipped_list_path",
    "work_dir_for",
]

logger = logging.getLogger(__name__)

#: The record of what made a work folder's shards, inside it.
FINGERPRINT_FILE = "fingerprint.json"
_RESULT_KEYS = {"image_id", "category_id", "bbox", "score", "segmentation"}


def work_dir_for(main_output: str | os.PathLike) -> Path:
    """The work folder of a run whose main output (submission file or export folder) is
    ``main_output``: ``<main_output>.partial`` beside it."""
    main_output = Path(main_output)
    return main_output.with_name(main_output.name + ".partial")


def skipped_list_path(main_output: str | os.PathLike) -> Path:
    """Where ``--skip-bad`` lists the images it skipped: ``<main_output>.skipped.txt``."""
    main_output = Path(main_output)
    return main_output.with_name(main_output.name + ".skipped.txt")


def prediction_fingerprint(
    cfg: CfgNode,
    tta: bool,
    formats: Sequence[str],
    entries: Sequence[dict],
    keep_overlaps: bool = False,
) -> dict[str, str]:
    """What decides a run's results, to refuse resuming shards made by a different run.

    Args:
        cfg: the prediction config (the device and output folder do not count: the same
            weights give the same cells on CPU and GPU).
        tta: test-time augmentation on or off.
        formats: the requested formats (a resumed run must write every format for every image).
        entries: the id map entries.
        keep_overlaps: the export mode (``--keep-overlaps``): the GeoJSON and the table hold
            other cells in each mode, so a resumed run must keep the mode.

    Returns:
        Readable fields: ``score_thresh``, ``mask_thresh``, ``weights`` (SHA-256 of a local
        file, else the name), ``config`` (SHA-256 of the rest), ``tta``, ``formats``,
        ``id_map`` (SHA-256), ``keep_overlaps``.
    """
    rest = cfg.clone()
    rest.defrost()
    rest.MODEL.DEVICE = ""
    rest.OUTPUT_DIR = ""
    weights = cfg.MODEL.WEIGHTS
    model = {
        "score_thresh": repr(float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)),
        "mask_thresh": repr(float(cfg.MODEL.CELLSEG.MASK_THRESHOLD)),
        "weights": f"sha256:{sha256_file(weights)}" if os.path.isfile(weights) else weights,
        "config": hashlib.sha256(rest.dump().encode()).hexdigest(),
    }
    return run_fingerprint(model, tta, formats, entries, keep_overlaps)


def run_fingerprint(
    model: dict[str, str],
    tta: bool,
    formats: Sequence[str],
    entries: Sequence[dict],
    keep_overlaps: bool = False,
) -> dict[str, str]:
    """The fingerprint from the model's fields (``score_thresh``, ``mask_thresh``, ``weights``,
    ``config``) and the run's own (``tta``, ``formats``, ``id_map``, ``keep_overlaps``).

    Why apart: an eager config and an exported model folder name the model differently, while
    what the run adds must be recorded the same way for both.
    """
    return {
        **model,
        "tta": str(bool(tta)),
        "formats": ",".join(sorted(formats)),
        "id_map": hashlib.sha256(json.dumps(list(entries), sort_keys=True).encode()).hexdigest(),
        "keep_overlaps": str(bool(keep_overlaps)),
    }


def _is_int(value: object) -> bool:
    """A JSON integer (``True`` is an ``int`` to Python, not to JSON)."""
    return type(value) is int


def _is_finite(value: object) -> bool:
    """A finite JSON number. Exact types, not ``numbers.Real``: the values come from
    ``parse_json``, whose integers have at most 20 digits (and the ABC check costs ~10x)."""
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value))


def _result_problem(result: object, entry: dict, num_classes: int) -> str | None:
    """Why one result of an image's shard cannot be submitted, or None."""
    if not isinstance(result, dict) or set(result) != _RESULT_KEYS:
        return f"not an object with exactly {', '.join(sorted(_RESULT_KEYS))}"
    if result["image_id"] != entry["id"] or not _is_int(result["image_id"]):
        return f"image_id {result['image_id']!r:.40} is not this shard's image {entry['id']}"
    category = result["category_id"]
    if not _is_int(category) or not 1 <= category <= num_classes:
        return f"category_id {category!r:.40} is not a class of this run (1..{num_classes})"
    score = result["score"]
    if not _is_finite(score) or not 0 <= score <= 1:
        return f"score {score!r:.40} is not a number in [0, 1]"
    bbox = result["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_finite, bbox)):
        return "bbox is not four numbers"
    segmentation = result["segmentation"]
    if (
        not isinstance(segmentation, dict)
        or set(segmentation) != {"size", "counts"}
        or segmentation["size"] != [entry["height"], entry["width"]]
        or not isinstance(segmentation["counts"], str)
    ):
        return f"segmentation is not a COCO RLE of size [{entry['height']}, {entry['width']}]"
    return None


def check_coco_shard(data: bytes, entry: dict, num_classes: int, source: str) -> int:
    """Check one image's COCO shard and return its number of results.

    The checks: a JSON list (bounded integers, :func:`~cellseg_d2.data.validate.parse_json`) of
    objects with exactly the submission keys; ``image_id`` the shard's own image;
    ``category_id`` in 1..``num_classes``; ``score`` in [0, 1]; ``bbox`` four numbers; an RLE
    ``segmentation`` of the image's size with string counts. The RLE runs themselves are the
    submission checker's business (``validate_submission.py``).

    Args:
        data: the shard file's bytes.
        entry: the image's id-map entry (``id``, ``height``, ``width``).
        num_classes: the run's number of classes.
        source: the shard's path, for messages.

    Raises:
        CellDataError: naming ``source`` and the first problem.
    """
    results = parse_json(data, source)
    if not isinstance(results, list):
        raise CellDataError(f"{source}: not a JSON list of results")
    for index, result in enumerate(results):
        problem = _result_problem(result, entry, num_classes)
        if problem:
            raise CellDataError(f"{source}: result {index}: {problem}")
    return len(results)


def check_csv_shard(text: str, entry: dict, num_classes: int, source: str) -> int:
    """Check one image's rows of the per-cell table and return their number.

    Each row has the table's columns (:data:`~cellseg_d2.inference.export.CSV_COLUMNS`), names
    the shard's image (file name as written, id), numbers its cells 1..n in order, gives a
    class of the run and says which cells the table holds (its last column, ``cells``).

    Raises:
        CellDataError: naming ``source``, the row and the problem.
    """
    name = spreadsheet_safe(entry["file_name"])
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise CellDataError(f"{source}: not CSV: {exc}") from exc
    for number, row in enumerate(rows, start=1):
        if len(row) != len(CSV_COLUMNS):
            problem = f"{len(row)} columns instead of {len(CSV_COLUMNS)}"
        elif row[0] != name or row[1] != str(entry["id"]):
            problem = f"image {row[0]!r:.60} / {row[1]!r:.30} is not this shard's image"
        elif row[2] != str(number):
            problem = f"cell id {row[2]!r:.30} where {number} comes next"
        elif not (row[3].isascii() and row[3].isdigit() and 1 <= int(row[3]) <= num_classes):
            problem = f"class_id {row[3]!r:.30} is not a class of this run (1..{num_classes})"
        elif row[-1] not in (CELLS_LABEL_IMAGE, CELLS_ALL_DETECTIONS):
            problem = f"cells {row[-1]!r:.40} is neither {CELLS_LABEL_IMAGE!r} nor all detections"
        else:
            continue
        raise CellDataError(f"{source}: row {number}: {problem}")
    return len(rows)


class PredictionShards:
    """The work folder of a streamed run: one small file per finished image.

    ``<image_id>.json`` (the image's COCO results, possibly ``[]``) is written last and marks the
    image done; ``<image_id>.csv`` holds its table rows when the csv format is on. Every file is
    written atomically, so a shard is complete or absent, whenever the run stops.
    """

    def __init__(self, work_dir: Path, fingerprint: dict[str, str], resume: bool) -> None:
        """Open (``resume``) or create the work folder.

        Raises:
            CellDataError: the folder exists without ``resume`` (its results would be lost), or
                was made by a run with another fingerprint (naming the fields that differ).
        """
        self.work_dir = work_dir
        stamp = work_dir / FINGERPRINT_FILE
        if work_dir.exists():
            if not resume:
                raise CellDataError(
                    f"{work_dir}: holds the results of an unfinished run; pass --resume to "
                    "continue it, or remove the folder to start over"
                )
            try:
                stored = parse_json(stamp.read_bytes(), str(stamp))
            except OSError as exc:
                raise CellDataError(
                    f"{stamp}: unreadable ({exc}); remove {work_dir} to start over"
                ) from exc
            if not isinstance(stored, dict):
                raise CellDataError(f"{stamp}: not a fingerprint; remove {work_dir} to start over")
            differ = sorted(
                key for key in fingerprint.keys() | stored.keys()
                if stored.get(key) != fingerprint.get(key)
            )  # fmt: skip
            if differ:
                raise CellDataError(
                    f"{work_dir}: its results were made with another {', '.join(differ)} "
                    f"(stored in {stamp}); resume with the same settings, or remove the folder "
                    "to start over"
                )
        else:
            if resume:
                logger.info("%s: nothing to resume, starting a new run", work_dir)
            with atomic_write(stamp, "w") as handle:
                json.dump(fingerprint, handle, indent=1)

    def path(self, image_id: int, suffix: str) -> Path:
        """The shard of ``image_id`` with ``suffix`` (``.json``, ``.csv``)."""
        return self.work_dir / f"{image_id}{suffix}"

    def read_checked(self, entry: dict, suffix: str, num_classes: int) -> tuple[str, int]:
        """An image's shard text, checked (:func:`check_coco_shard`, :func:`check_csv_shard`),
        and its number of results or rows.

        Raises:
            CellDataError: the shard is missing, unreadable or bad (named, with the problem).
        """
        path = self.path(entry["id"], suffix)
        try:
            data = path.read_bytes()
            text = data.decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise CellDataError(f"{path}: unreadable shard: {exc}") from exc
        if suffix == ".json":
            return text, check_coco_shard(data, entry, num_classes, str(path))
        return text, check_csv_shard(text, entry, num_classes, str(path))

    def finished(self, entries: Sequence[dict], suffixes: Sequence[str], num_classes: int) -> set:
        """The ids of the images whose shards are all present and good, for ``--resume``.

        A bad shard is logged by name with its problem and removed with its siblings, so its
        image is predicted again; leftover temporary files of a killed run are removed too.
        """
        for leftover in self.work_dir.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        done = set()
        for entry in entries:
            if not self.path(entry["id"], ".json").is_file():
                continue
            try:
                for suffix in suffixes:
                    self.read_checked(entry, suffix, num_classes)
            except CellDataError as exc:
                logger.warning("Bad shard, %s will be predicted again: %s", entry["file_name"], exc)
                self.discard(entry["id"])
                continue
            done.add(entry["id"])
        return done

    def discard(self, image_id: int) -> None:
        """Remove an image's shards (the ``.json`` marker first), so it counts as not done."""
        for suffix in (".json", ".csv"):
            with contextlib.suppress(FileNotFoundError):
                self.path(image_id, suffix).unlink()

    def add(self, image_id: int, coco_text: str, csv_text: str | None) -> None:
        """Store one image's results; the COCO shard goes last, marking the image done."""
        if csv_text is not None:
            with atomic_write(self.path(image_id, ".csv"), "w") as handle:
                handle.write(csv_text)
        with atomic_write(self.path(image_id, ".json"), "w") as handle:
            handle.write(coco_text)

    def remove(self) -> None:
        """Delete the work folder after the outputs were assembled."""
        shutil.rmtree(self.work_dir)
