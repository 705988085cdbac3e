"""Chunk shards of a slide predicted on several processes: written atomically, read as untrusted.

Why files per chunk: each rank of :mod:`~cellseg_d2.inference.slide_ranks` writes the chunks it
predicted without talking to the others, into the slide's work folder
``<stem>.cells.sqlite.partial.d/`` (``chunk-000012.json`` each, and ``settings.json`` of the
run); the launching process later copies them into the cell store in chunk order. A killed rank
leaves whole shards only (temporary name, then rename); a truncated or edited shard is refused
naming the file, and on ``--resume`` removed and predicted again. JSON keeps every float
exactly (``repr``), so the store built from shards equals a one-process run's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.cell_store import partial_path
from cellseg_d2.inference.slide_plan import SlidePlan
from cellseg_d2.inference.slide_stitch import SlideCell
from cellseg_d2.utils.files import atomic_write, parse_json, temp_name_pattern

__all__ = [
    "SETTINGS_NAME",
    "prepare_slide_shards",
    "read_chunk_shard",
    "shard_path",
    "slide_work_dir",
    "write_chunk_shard",
]

logger = logging.getLogger(__name__)

#: The slide's settings in its work folder (a resume must match them).
SETTINGS_NAME = "settings.json"
_SHARD_PATTERN = r"chunk-\d{6}\.json"
_NUMBERS = 14  # score, box (4), area, centroid (2), perimeter, eccentricity, solidity, rgb (3)


def slide_work_dir(store: str | os.PathLike) -> Path:
    """The folder of a slide's chunk shards: ``<stem>.cells.sqlite.partial.d``."""
    partial = partial_path(store)
    return partial.with_name(partial.name + ".d")


def shard_path(work_dir: Path, chunk: int) -> Path:
    """Where chunk ``chunk`` of a slide is stored by the rank that predicted it."""
    return work_dir / f"chunk-{chunk:06d}.json"


def _plain(value: Any) -> Any:
    """``json.dump`` fallback for NumPy scalars (their Python value, exactly)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_chunk_shard(
    path: Path, plan_digest: str, chunk: int, tiles: Sequence[int], cells: Sequence[SlideCell]
) -> None:
    """Write one finished chunk atomically (a killed rank leaves no half shard).

    JSON keeps every float exactly (``repr``), so the store built from shards holds the values
    a one-process run stores.
    """
    rows = [
        [c.tile, c.category, c.score, *c.box, c.area, c.centroid_x, c.centroid_y, c.perimeter]
        + [c.eccentricity, c.solidity, *c.mean_rgb, c.geometry]
        for c in cells
    ]
    payload = {"plan": plan_digest, "chunk": chunk, "tiles": list(tiles), "cells": rows}
    with atomic_write(path, "w") as handle:
        json.dump(payload, handle, default=_plain, separators=(",", ":"))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shard_cell(row: object, tiles: set[int]) -> SlideCell | None:
    """One row of a shard as a cell, or None when it is malformed."""
    if not isinstance(row, list) or len(row) != 3 + _NUMBERS:
        return None
    tile, category, numbers, geometry = row[0], row[1], row[2:-1], row[-1]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (tile, category)):
        return None
    if tile not in tiles or category < 0 or not all(map(_is_number, numbers)):
        return None
    parsed = geometry
    if isinstance(geometry, str):  # the cell's GeoJSON text (a shard of an older run: a dict)
        try:
            parsed = json.loads(geometry)
        except ValueError:
            return None
    if not isinstance(parsed, dict) or parsed.get("type") not in ("Polygon", "MultiPolygon"):
        return None
    if not isinstance(parsed.get("coordinates"), list):
        return None
    if not isinstance(geometry, str):
        geometry = json.dumps(parsed, separators=(",", ":"))
    score, x0, y0, x1, y1, area, cx, cy, perimeter, eccentricity, solidity, r, g, b = numbers
    return SlideCell(
        tile, category, score, (x0, y0, x1, y1), area, cx, cy, perimeter, eccentricity,
        solidity, (r, g, b), geometry,
    )  # fmt: skip


def read_chunk_shard(
    path: Path, plan_digest: str, chunk: int, tiles: Sequence[int]
) -> list[SlideCell]:
    """A chunk shard's cells, checked against the plan (shards are untrusted on read).

    Raises:
        CellDataError: missing, unreadable, truncated or edited, or of another plan or chunk;
            the message names the file.
    """
    try:
        data = parse_json(path.read_bytes(), str(path))
    except OSError as exc:
        raise CellDataError(f"{path}: cannot read the chunk shard ({exc})") from exc
    if not isinstance(data, dict) or set(data) != {"plan", "chunk", "tiles", "cells"}:
        raise CellDataError(f"{path}: not a chunk shard")
    if data["plan"] != plan_digest or data["chunk"] != chunk or data["tiles"] != list(tiles):
        raise CellDataError(f"{path}: a shard of another plan or chunk than chunk {chunk}")
    rows = data["cells"]
    cells = [_shard_cell(row, set(tiles)) for row in rows] if isinstance(rows, list) else [None]
    bad = next((i for i, cell in enumerate(cells) if cell is None), None)
    if bad is not None:
        raise CellDataError(f"{path}: malformed cell row {bad}")
    return cells  # type: ignore[return-value]


def prepare_slide_shards(plan: SlidePlan, resume: bool, owner: bool) -> list[int]:
    """The chunks of a slide still to predict: all of them without ``resume``, else those
    without a good shard (a bad one is logged, naming the file).

    Only the launching process of machine 0 (``owner``) changes the folder: it starts it afresh
    (without ``resume``, or when it has no settings yet) or removes bad shards and temporary
    files; the other machines only read it, so every machine lists the same chunks.

    Raises:
        CellDataError: with ``resume``, a work folder made with other settings.
    """
    work_dir = slide_work_dir(plan.paths["store"])
    settings_path = work_dir / SETTINGS_NAME
    wanted = json.loads(json.dumps(plan.settings, sort_keys=True))
    count = len(plan.chunks)
    if resume and settings_path.is_file():
        stored = parse_json(settings_path.read_bytes(), str(settings_path))
        if stored != wanted:
            old = stored if isinstance(stored, dict) else {}
            differ = sorted(k for k in set(old) | set(wanted) if old.get(k) != wanted.get(k))
            raise CellDataError(
                f"{settings_path}: made with other settings ({', '.join(differ)} differ); run "
                "without --resume to start over"
            )
    elif owner:  # a fresh start, or a folder killed before its settings were written
        shutil.rmtree(work_dir, ignore_errors=True)
        with atomic_write(settings_path, "w") as handle:
            json.dump(wanted, handle, sort_keys=True)
    if not resume:
        return list(range(count))
    if owner:
        leftovers = temp_name_pattern(_SHARD_PATTERN)
        for path in work_dir.iterdir():
            if leftovers.match(path.name):
                path.unlink(missing_ok=True)
    todo = []
    for chunk, members in enumerate(plan.chunks):
        path = shard_path(work_dir, chunk)
        if not path.is_file():
            todo.append(chunk)
            continue
        try:
            read_chunk_shard(path, plan.settings["plan"], chunk, [t.index for t in members])
        except CellDataError as exc:
            logger.warning("%s; predicting chunk %d again", exc, chunk)
            if owner:
                path.unlink(missing_ok=True)
            todo.append(chunk)
    return todo
