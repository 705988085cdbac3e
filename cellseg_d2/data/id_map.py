"""The test id map, ``test_image_name_to_ids.json``: read, bounded and checked in one place.

Every tool that takes ``--id-map`` reads it through :func:`load_id_map`, so the rules on its
names (bare file names whose stem is a usable folder name), ids, sizes and the bounds on the
file itself hold everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from cellseg_d2.data.json_read import check_json_values
from cellseg_d2.data.limits import (
    MAX_ID_MAP_MB_ENV,
    MIN_ID_MAP_BYTES_PER_VALUE,
    max_id_map_bytes,
    read_bytes_bounded,
)
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import parse_json

__all__ = ["MAX_ID_MAP_SIDE", "file_name_problem", "load_id_map"]

#: The largest image side an id map may declare (pixel counts stay far inside int64).
MAX_ID_MAP_SIDE = 2**20
#: Id-map ids must fit the int64 that COCO tools and numpy store them in.
_INT64 = range(-(2**63), 2**63)
_REQUIRED = ("file_name", "id", "height", "width")


def file_name_problem(name: str) -> str | None:
    """Why an id-map ``file_name`` is not a bare file name, or None when it is one.

    Bare names keep every reader inside the image folder: ``../train/x/image.tif`` or
    ``/etc/passwd`` would otherwise be opened by the scorer and the figure tool. The stem counts
    too: the scorer reads the masks of ``<stem>.tif`` from ``<gt>/<stem>/`` and prediction names
    its label files after it, so ``...tif`` (stem ``..``) would read ``<gt>/../class1.tif``.
    """
    if not name or name in (".", ".."):
        return "is empty or a dot name"
    if "/" in name or "\\" in name:
        return "holds a path separator (only a bare file name is allowed)"
    if len(name) >= 2 and name[1] == ":":
        return "starts with a drive letter"
    if "\0" in name:
        return "holds a NUL character"
    if PurePosixPath(name).stem in ("", ".", ".."):
        return "has a dot stem, which would name a folder outside the ground-truth folder"
    return None


def _read_entries(path: Path) -> list:
    """The parsed id map, its size and value count bounded before parsing."""
    try:
        data = read_bytes_bounded(path, max_id_map_bytes(), "an id map", MAX_ID_MAP_MB_ENV)
    except OSError as exc:
        raise CellDataError(f"{path}: unreadable id map: {exc}") from exc
    check_json_values(
        data,
        len(data) // MIN_ID_MAP_BYTES_PER_VALUE + 16,
        str(path),
        f"an id map has at most one per {MIN_ID_MAP_BYTES_PER_VALUE} bytes",
    )
    entries = parse_json(data, str(path))
    if not isinstance(entries, list):
        raise CellDataError(f"{path}: expected a JSON list of {{file_name, id, height, width}}")
    return entries


def _check_entry(path: Path, index: int, entry: object) -> None:
    """Raise on one malformed entry: missing or mistyped field, bad range, unsafe name."""
    if not isinstance(entry, dict) or not set(_REQUIRED) <= entry.keys():
        raise CellDataError(
            f"{path}: entry {index} must have file_name, id, height and width: {entry!r:.200}"
        )
    for key in _REQUIRED[1:]:
        if not isinstance(entry[key], int) or isinstance(entry[key], bool):
            raise CellDataError(f"{path}: entry {index} has a non-integer {key}: {entry!r:.200}")
    if entry["id"] not in _INT64:
        raise CellDataError(f"{path}: entry {index} has an id outside int64: {entry['id']}")
    for key in ("height", "width"):
        if not 1 <= entry[key] <= MAX_ID_MAP_SIDE:
            raise CellDataError(
                f"{path}: entry {index} has {key} {entry[key]}, not in 1..{MAX_ID_MAP_SIDE}"
            )
    name = entry["file_name"]
    if not isinstance(name, str):
        raise CellDataError(f"{path}: entry {index} has a non-string file_name: {entry!r:.200}")
    problem = file_name_problem(name)
    if problem:
        raise CellDataError(f"{path}: entry {index}: file_name {name!r:.200} {problem}")


def load_id_map(path: str | os.PathLike) -> list[dict]:
    """Parse ``test_image_name_to_ids.json`` and check each entry's fields and types.

    ``file_name`` must be a bare file name (no folder, ``..``, absolute path or drive letter,
    and not a dot stem such as ``...tif``): the tools join it to the image folder, and a name
    that walks out of it would make them read any file on the machine. The file is refused from
    its size before reading when above :func:`~cellseg_d2.data.limits.max_id_map_bytes`, and
    before parsing when it holds more JSON values than an id map of its size can.

    Raises:
        CellDataError: too large or too dense a file, unreadable JSON, not a list, an entry
            without integer ``id``, ``height``, ``width`` and a string ``file_name``, a
            ``file_name`` that is not a bare name, an id outside int64 or a side outside
            1..:data:`MAX_ID_MAP_SIDE`, or a repeated id or file name.
    """
    path = Path(path)
    entries = _read_entries(path)
    for index, entry in enumerate(entries):
        _check_entry(path, index, entry)
    seen_ids: dict[int, str] = {}
    seen_names: set[str] = set()
    for entry in entries:
        name, image_id = entry["file_name"], entry["id"]
        if image_id in seen_ids:
            raise CellDataError(
                f"{path}: id {image_id} is used twice ({seen_ids[image_id]} and {name})"
            )
        if name in seen_names:
            raise CellDataError(f"{path}: file {name} is listed twice")
        seen_ids[image_id] = name
        seen_names.add(name)
    return entries
