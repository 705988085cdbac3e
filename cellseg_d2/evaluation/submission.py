"""The CodaBench submission: a COCO results list, and how it is written.

A submission is a JSON list with one entry per detection::

    {"image_id": int, "category_id": 1..4, "bbox": [x, y, w, h], "score": float,
     "segmentation": {"size": [h, w], "counts": str}}

``image_id`` comes from ``test_image_name_to_ids.json`` (the id map) and ``bbox`` is in original
image pixels. CodaBench takes a ``.zip`` holding the list as ``test-results.json``; the plain JSON
is what local tools and detectron2's ``coco_instances_results.json`` use. Both are read alike
(:mod:`cellseg_d2.evaluation.submission_read`) and checked by
:mod:`cellseg_d2.evaluation.submission_check`.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np

from cellseg_d2.evaluation.submission_read import RESULTS_FILE_NAME
from cellseg_d2.utils.files import atomic_write

__all__ = [
    "encode_results",
    "group_by_image",
    "write_submission",
    "write_submission_parts",
]

logger = logging.getLogger(__name__)


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
