"""File helpers every layer shares: atomic writes, bounded JSON parsing, file hashes, and a size
check made before a small input is read whole.

Why one home: "nothing already written is lost" and "hostile input gets a clear error" are
promises of every tool; each is kept by one implementation here rather than by copies that drift.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cellseg_d2.errors import CellDataError, CellSegError

__all__ = [
    "InputFileError",
    "MAX_JSON_INT_DIGITS",
    "check_file_size",
    "atomic_write",
    "parse_json",
    "sha256_file",
    "temp_name_pattern",
]

#: Integers in a JSON input may have at most this many digits (int64 has 19): a longer one is
#: garbage, and Python would otherwise spend quadratic time on it or refuse it with a traceback.
MAX_JSON_INT_DIGITS = 20

# Read once at import (os.umask can only be read by setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def temp_name_pattern(file_pattern: str) -> re.Pattern[str]:
    """The names :func:`atomic_write` gives its temporary files for targets matching
    ``file_pattern`` (a regex of the final name): ``.<name>.<random>.tmp``.

    Why: a kill during a write leaves such a file behind; cleaners (checkpoints, predict outputs)
    recognise their own leftovers by this one pattern instead of guessing.
    """
    return re.compile(rf"^\.(?:{file_pattern})\.[A-Za-z0-9_]+\.tmp$")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it onto ``path`` on success.

    NOTE: the rename is atomic on POSIX file systems, so readers see either the old file or the
    complete new one. On an exception the temporary file is removed and ``path`` is untouched.

    Args:
        path: the final file name; its folder is created if needed.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Yields:
        The open temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _bounded_int(text: str) -> int:
    """``parse_int`` hook of :func:`parse_json`: refuse absurdly long integers up front."""
    digits = len(text.lstrip("-"))
    if digits > MAX_JSON_INT_DIGITS:
        raise ValueError(f"a number with {digits} digits (at most {MAX_JSON_INT_DIGITS} allowed)")
    return int(text)


def parse_json(data: str | bytes, source: str) -> object:
    """Parse JSON from an untrusted file into Python values, with a clear error for hostile input.

    Why not bare ``json.loads``: deeply nested arrays end in a ``RecursionError`` and huge
    integers in a ``ValueError`` (or minutes of conversion) far from the file that caused them.
    Here every failure is a :class:`CellDataError` naming ``source``.

    Args:
        data: the file's content.
        source: what to name in messages (the path, or ``zip:member``).

    Raises:
        CellDataError: not UTF-8, not JSON, nested too deeply, or an integer longer than
            :data:`MAX_JSON_INT_DIGITS` digits.
    """
    try:
        return json.loads(data, parse_int=_bounded_int)
    except RecursionError:
        raise CellDataError(f"{source}: JSON nested too deeply to read") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CellDataError(f"{source}: unreadable JSON: {exc}") from exc


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InputFileError(CellSegError, ValueError):
    """An input file that is missing, not a regular file, or too large to read."""


def check_file_size(path: str | os.PathLike, limit: int, what: str) -> int:
    """Refuse ``path`` unless it is a regular file of at most ``limit`` bytes.

    Args:
        path: the file about to be read.
        limit: the largest size accepted, in bytes.
        what: how to name the file in messages (``"id map"``).

    Returns:
        The file's size in bytes.

    Raises:
        InputFileError: missing or unreadable, not a regular file (a folder, a device, a pipe:
            their size says nothing about what a read returns), or larger than ``limit``.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"{path}: the {what} is not a regular file")
    if info.st_size > limit:
        raise InputFileError(
            f"{path}: the {what} has {info.st_size:,} bytes, more than the {limit:,} accepted"
        )
    return info.st_size
