"""The end of a streamed prediction run: shards in, submission and table out, both checked.

Each output is built from the work folder's shards in id-map order, every shard checked as it is
read (:meth:`~cellseg_d2.inference.shards.PredictionShards.read_checked`), into a staging file
beside the output (:func:`~cellseg_d2.inference.outputs.staging_path`). The staging file is then
read back, streaming, and must hold exactly the results (or rows) of the shards, image by
image; only then does it replace the output. Memory stays that of one shard and one result, so a
10,000-image run assembles in constant memory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import write_submission_parts
from cellseg_d2.evaluation.submission_read import RESULTS_FILE_NAME
from cellseg_d2.inference.export import CSV_COLUMNS
from cellseg_d2.inference.outputs import CSV_FILE_NAME, staging_path
from cellseg_d2.inference.shards import PredictionShards
from cellseg_d2.utils.files import atomic_write

__all__ = ["MAX_RESULT_CHARS", "assemble_outputs", "iter_json_list"]

logger = logging.getLogger(__name__)

#: The longest single result read back from an assembled submission (one RLE of a huge image
#: fits many times over); beyond it the file is refused rather than buffered whole.
MAX_RESULT_CHARS = 64 << 20
_CHUNK_CHARS = 1 << 20
_WHITESPACE = " \t\n\r"
_AFTER_ITEM = _WHITESPACE + ",]"


def iter_json_list(stream: TextIO, source: str) -> Iterator[object]:
    """Yield the items of the JSON list in ``stream`` one at a time, in constant memory.

    Why not ``json.load``: an assembled submission can hold millions of results; reading it
    back whole costs many times its size in memory. Items are parsed by the standard decoder
    (``raw_decode``) from a buffer of about one MiB that slides along the file.

    Raises:
        CellDataError: naming ``source``: not a JSON list, malformed, trailing data, or an item
            longer than :data:`MAX_RESULT_CHARS`.
    """
    # One piece on purpose: a small streaming parser whose helpers share the buffer state.
    decoder = json.JSONDecoder()
    buffer, pos, eof = "", 0, False

    def fill() -> bool:
        """Read more into the buffer; False at the end of the stream."""
        nonlocal buffer, pos, eof
        chunk = "" if eof else stream.read(_CHUNK_CHARS)
        eof = eof or not chunk
        buffer, pos = buffer[pos:] + chunk, 0
        return bool(chunk)

    def next_char() -> str:
        """Skip whitespace and return the next character ('' at the end)."""
        nonlocal pos
        while True:
            while pos < len(buffer) and buffer[pos] in _WHITESPACE:
                pos += 1
            if pos < len(buffer) or not fill():
                return buffer[pos] if pos < len(buffer) else ""

    if next_char() != "[":
        raise CellDataError(f"{source}: not a JSON list")
    pos += 1
    expect_item = next_char() != "]"
    if not expect_item:
        pos += 1
    while expect_item:
        next_char()
        while True:
            try:
                item, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                if len(buffer) - pos > MAX_RESULT_CHARS:
                    too_long = f"a result longer than {MAX_RESULT_CHARS:,} characters"
                    raise CellDataError(f"{source}: {too_long}") from exc
                if fill():
                    continue
                raise CellDataError(f"{source}: malformed JSON: {exc}") from exc
            cut = end == len(buffer) or buffer[end] not in _AFTER_ITEM
            if cut and fill():
                continue  # a number cut by the buffer's end ("2" of "2.5"): parse it again
            break
        pos = end
        yield item
        separator = next_char()
        if separator not in (",", "]"):
            raise CellDataError(f"{source}: malformed JSON list after item ({separator!r})")
        pos += 1
        expect_item = separator == ","
    if next_char() != "":
        raise CellDataError(f"{source}: data after the end of the JSON list")


def _count_submission(path: Path, zip_output: bool) -> Counter:
    """Results per ``image_id`` in an assembled submission, read back streaming."""
    with contextlib.ExitStack() as stack:
        if zip_output:
            archive = stack.enter_context(zipfile.ZipFile(path))
            if archive.namelist() != [RESULTS_FILE_NAME]:
                raise CellDataError(f"{path}: the zip holds {archive.namelist()}")
            raw = stack.enter_context(archive.open(RESULTS_FILE_NAME))
            stream = stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8"))
        else:
            stream = stack.enter_context(open(path, encoding="utf-8"))
        items = iter_json_list(stream, str(path))
        return Counter(item.get("image_id") if isinstance(item, dict) else None for item in items)


def _count_table(path: Path) -> Counter:
    """Rows per ``image_id`` (as text) in an assembled per-cell table, read back streaming."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, strict=True)
        if next(reader, None) != list(CSV_COLUMNS):
            raise CellDataError(f"{path}: the header is not the table's columns")
        return Counter(row[1] if len(row) > 1 else None for row in reader)


def _write_checked(
    path: Path,
    write: Callable[[Path], None],
    expected: Counter,
    count: Callable[[Path], Counter],
    what: str,
) -> None:
    """Write ``path`` through its staging file, compare its read-back counts per image with
    ``expected`` and only then move it into place (an existing output stays otherwise)."""
    staging = staging_path(path)
    try:
        write(staging)
        found = count(staging)
        expected = +expected  # images with no result do not appear in the file
        if found != expected:
            wrong = next(key for key in found | expected if found[key] != expected[key])
            raise CellDataError(
                f"{path}: the assembled {what} holds {found.total()} entries on {len(found)} "
                f"images where the shards hold {expected.total()} on {len(expected)} (image id "
                f"{wrong!r}: {found[wrong]} vs {expected[wrong]}); not written, the work folder "
                "is kept: rerun with --resume"
            )
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def assemble_outputs(
    shards: PredictionShards,
    entries: Sequence[dict],
    formats: Sequence[str],
    num_classes: int,
    output: Path | None,
    zip_output: bool,
    export_dir: Path | None,
) -> None:
    """Stream the shards into the submission and the table, in id-map order, each checked.

    Images without a shard (skipped as unreadable) add nothing.

    Raises:
        CellDataError: a bad shard (named; it is removed so that ``--resume`` predicts its image
            again) or an assembled output that does not hold what the shards hold.
    """
    present = [entry for entry in entries if shards.path(entry["id"], ".json").is_file()]

    def checked_texts(suffix: str, counts: Counter, key: Callable[[dict], object]) -> Iterator:
        for entry in present:
            try:
                text, number = shards.read_checked(entry, suffix, num_classes)
            except CellDataError:
                shards.discard(entry["id"])
                raise
            counts[key(entry)] += number
            yield text

    if "coco" in formats:
        expected: Counter = Counter()

        def write_submission(path: Path) -> None:
            texts = checked_texts(".json", expected, lambda entry: entry["id"])
            write_submission_parts(texts, path, zip_output)

        _write_checked(
            output,
            write_submission,
            expected,
            lambda p: _count_submission(p, zip_output),
            "submission",
        )
        logger.info("Wrote the submission %s", output)
    if "csv" in formats:
        rows: Counter = Counter()

        def write_table(path: Path) -> None:
            with atomic_write(path, "w") as handle:
                handle.write(",".join(CSV_COLUMNS) + "\n")
                for text in checked_texts(".csv", rows, lambda entry: str(entry["id"])):
                    handle.write(text)

        table = export_dir / CSV_FILE_NAME
        _write_checked(table, write_table, rows, _count_table, "table")
        logger.info("Wrote the per-cell table %s", table)
