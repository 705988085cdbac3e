"""The project's JSON cache files: keyed, written atomically, never over a user's file.

A cache file carries its key in ``info["cellseg"]``; a load whose key differs rebuilds it. The
converter (:mod:`cellseg_d2.data.convert`) keeps its COCO JSON under ``<root>/.cellseg_cache/``
with these helpers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import atomic_write

__all__ = ["fingerprint", "is_cache_file", "read_cache", "write_cache"]

logger = logging.getLogger(__name__)


def fingerprint(root: Path, paths: Iterable[Path]) -> str:
    """Hash of (path relative to ``root``, size, mtime_ns) of each file: cheap, no reads.

    NOTE: contents are not hashed; a tool that rewrites a file keeping its size and mtime would go
    unnoticed, which no normal editor or export does.
    """
    digest = hashlib.sha1()
    for path in paths:
        stat = path.stat()
        digest.update(
            f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def is_cache_file(path: Path) -> bool:
    """Whether ``path`` is a JSON file this project wrote (it carries ``info["cellseg"]``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("info"), dict)
        and ("cellseg" in data["info"])
    )


def read_cache(path: Path, key: dict) -> dict | None:
    """The cached COCO dict at ``path`` if its key matches ``key``, else None."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            coco = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        logger.warning("%s: unreadable cache (%s); rebuilding it", path, exc)
        return None
    info = coco.get("info") if isinstance(coco, dict) else None
    cached = info.get("cellseg", {}) if isinstance(info, dict) else {}
    if any(cached.get(name) != value for name, value in key.items()):
        logger.info("%s: sources or settings changed; rebuilding the cache", path)
        return None
    return coco


def write_cache(path: Path, data: dict) -> None:
    """Write compact JSON atomically (readers see the old file or the whole new one).

    NOTE: an existing file is replaced only when this project wrote it (see
    :func:`is_cache_file`): the cache must never destroy a file the user put there.

    Raises:
        CellDataError: the cache folder cannot be written (e.g. a read-only dataset), or
            ``path`` holds a file the project did not write.
    """
    if path.exists() and not is_cache_file(path):
        raise CellDataError(
            f"{path}: exists and was not written by cellseg-d2; refusing to overwrite it. Move "
            f"it out of {path.parent} (the folder is the project's cache)"
        )
    try:
        with atomic_write(path, "w") as handle:
            json.dump(data, handle, separators=(",", ":"))
    except PermissionError as exc:
        raise CellDataError(
            f"{path.parent}: cannot write the conversion cache ({exc.strerror}); the dataset "
            "root must be writable, or copy the dataset to a writable place"
        ) from exc
