"""Checks made on a file before it is read.

Why: readers of small inputs (an id map, a list of names) read the whole file into memory and
parse it; given a 2 GB file by mistake, or ``/dev/zero``, they would spend that memory (or
forever) before any check could refuse the content. One ``stat`` first costs nothing.
"""

from __future__ import annotations

import os
import stat

from ..errors import CellSegError

__all__ = ["InputFileError", "check_file_size"]


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
