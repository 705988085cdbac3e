"""Reading a submission (JSON or CodaBench zip) with bounded memory.

Bounds, each checked before the costly step it guards: the file size (or the zip member's
decompressed size) before reading; the number of JSON values before parsing (at most one per
:data:`~cellseg_d2.data.limits.MIN_SUBMISSION_BYTES_PER_VALUE` bytes and, given the id map, at
most :data:`~cellseg_d2.data.limits.VALUES_PER_ENTRY` per allowed detection); and, given the id
map, the number of detections before any is checked (see :mod:`cellseg_d2.data.limits`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from cellseg_d2.data.json_read import check_json_values
from cellseg_d2.data.limits import (
    MAX_DETECTIONS_ENV,
    MAX_SUBMISSION_MB_ENV,
    MIN_SUBMISSION_BYTES_PER_VALUE,
    PIXELS_PER_DETECTION,
    VALUES_PER_ENTRY,
    max_submission_bytes,
    max_submission_entries,
    read_bytes_bounded,
    too_large,
)
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import parse_json

__all__ = ["RESULTS_FILE_NAME", "read_submission"]

#: The member name CodaBench looks for inside a zipped submission.
RESULTS_FILE_NAME = "test-results.json"
_WHAT = "a submission"


def _read_results_member(path: Path, archive: zipfile.ZipFile, limit: int) -> bytes:
    """Read ``test-results.json`` from a zip, streaming, never more than ``limit`` bytes.

    The header's size is checked first, but a crafted zip may understate it, so the bytes
    actually decompressed are capped too (one byte over the limit is enough to know). NOTE:
    Python's ``zipfile`` itself stops at the header's size and then fails the CRC check, which
    surfaces as "unreadable submission"; the cap keeps the bound independent of that detail.
    """
    names = archive.namelist()
    if RESULTS_FILE_NAME not in names:
        raise CellDataError(
            f"{path}: the zip must hold {RESULTS_FILE_NAME} at its top level; "
            f"found {', '.join(names[:5]) or 'nothing'}"
        )
    source = f"{path}: member {RESULTS_FILE_NAME}"
    info = archive.getinfo(RESULTS_FILE_NAME)
    if info.file_size > limit:
        raise too_large(
            source, f"{info.file_size} bytes uncompressed", limit, _WHAT, MAX_SUBMISSION_MB_ENV
        )
    with archive.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise too_large(
            source,
            "the decompressed data (its header understates it)",
            limit,
            _WHAT,
            MAX_SUBMISSION_MB_ENV,
        )
    return data


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """The submission's JSON text and the name of where it came from (file or zip member)."""
    limit = max_submission_bytes()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = _read_results_member(path, archive, limit)
            return data, f"{path}: member {RESULTS_FILE_NAME}"
        return read_bytes_bounded(path, limit, _WHAT, MAX_SUBMISSION_MB_ENV), str(path)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise CellDataError(f"{path}: unreadable submission: {exc}") from exc


def read_submission(
    path: str | os.PathLike, id_map_entries: list[dict] | None = None
) -> list[dict]:
    """Load a submission from a JSON file or a zip holding ``test-results.json``.

    Why one reader for both: the tools accept whatever the user has at hand, detectron2's
    ``coco_instances_results.json`` or the zip uploaded to CodaBench. The format is sniffed from
    the content, not the file name. Reads are bounded by
    :func:`~cellseg_d2.data.limits.max_submission_bytes`, and a text denser in JSON values than
    a submission can be is refused before parsing. With ``id_map_entries`` (what every tool
    passes) the memory is bounded by the test set too: a file with more JSON values than
    :data:`~cellseg_d2.data.limits.VALUES_PER_ENTRY` per allowed detection is refused before it
    is parsed, and one with more detections than
    :func:`~cellseg_d2.data.limits.max_submission_entries` before any is checked.

    Args:
        path: the JSON or zip file.
        id_map_entries: the id map the submission answers; None skips the bounds derived from
            it (for the project's own files).

    Returns:
        The results list as stored; its entries are checked by
        :func:`~cellseg_d2.evaluation.submission_check.validate_submission`.

    Raises:
        CellDataError: naming ``path`` when it is missing, larger than a limit (the message
            names the limit and how to raise it), not valid JSON (also: nested too deeply, or
            absurdly long numbers), a zip without ``test-results.json``, or when its top level
            is not a list.
    """
    # Long for its docstring: the bounds are checked in order, each before its step.
    path = Path(path)
    if not path.is_file():
        raise CellDataError(f"{path}: file not found")
    data, source = _read_bytes(path)
    check_json_values(
        data,
        len(data) // MIN_SUBMISSION_BYTES_PER_VALUE + 16,
        source,
        f"a submission has at most one per {MIN_SUBMISSION_BYTES_PER_VALUE} bytes",
    )
    max_entries = None
    if id_map_entries is not None:
        max_entries = max_submission_entries(id_map_entries)
        reason = (
            f"{VALUES_PER_ENTRY} per detection, for at most {max_entries} detections on the "
            f"{len(id_map_entries)} images of the id map; set {MAX_DETECTIONS_ENV} to allow "
            "more detections per image"
        )
        check_json_values(data, max_entries * VALUES_PER_ENTRY, source, reason)
    results = parse_json(data, source)
    del data
    if not isinstance(results, list):
        raise CellDataError(
            f"{path}: a submission must be a JSON list of detections, got {type(results).__name__}"
        )
    if max_entries is not None and len(results) > max_entries:
        raise CellDataError(
            f"{source}: {len(results)} detections, more than the {max_entries} allowed for the "
            f"{len(id_map_entries)} images of the id map (the larger of {MAX_DETECTIONS_ENV} per "
            f"image and one per {PIXELS_PER_DETECTION} pixels); set {MAX_DETECTIONS_ENV} to "
            "raise the limit"
        )
    return results
