"""The per-slide cell store: one SQLite file holding every cell of a slide, written chunk by chunk.

A slide holds up to millions of cells: they cannot wait in memory for the end of a run that may
take hours and may be stopped. So cells go to disk per chunk of tiles, in one transaction per
chunk, and a ``chunks`` table records which chunks are done. A stopped or crashed run reopened
with ``resume`` continues after the last finished chunk and ends with the same content as an
uninterrupted run: chunks are written strictly in order and cell ids continue from the largest
one written, so ids depend only on the plan and the model, not on where a run stopped.

Atomicity, why both a transaction per chunk and a rename: SQLite's rollback journal (the default
``journal_mode=DELETE`` with ``synchronous=FULL``) makes each chunk all-or-nothing even if the
process dies mid-write, which is what resuming needs; the work happens in
``<name>.cells.sqlite.partial`` and is renamed to ``<name>.cells.sqlite`` only when every chunk
is in, after the connection is closed (so no journal is left beside it). A file with the final
name is therefore always a complete store, which is what readers of the outputs (writers,
QuPath scripts, later analysis) may rely on. WAL mode is not used: its ``-wal`` file would
have to be checkpointed before a rename could be trusted, for no gain with one writer.

NOTE: no lock is taken here beyond SQLite's own file locks during a transaction; one process
writes a store, and the caller makes sure of it (the prediction tools lock their outputs).

Tables:

- ``cells``: ``cell_id INTEGER PRIMARY KEY`` (1, 2, ... in plan order), ``chunk``, ``tile``,
  ``category`` (0-based; outputs write ``class_id = category + 1``), ``score``, level-0 box
  ``x0 y0 x1 y1``, ``area`` (level-0 px), ``centroid_x``/``centroid_y``, ``perimeter``,
  ``eccentricity``, ``solidity``, ``mean_r``/``mean_g``/``mean_b`` and ``geometry`` (GeoJSON
  geometry text). All in level-0 pixels of the slide, the reader's offset NOT added (it is in
  the settings; the writers add it).
- ``cell_boxes``: R-tree on the boxes (``cell_id, x0, x1, y0, y1``) for region queries.
- ``chunks``: ``chunk``, ``first_tile``, ``last_tile``, ``tiles``, ``cells``.
- ``meta``: ``settings`` (JSON; a resumed run must match it), ``schema``, ``finished``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.slide_stitch import SlideCell
from cellseg_d2.utils.closing import Closing

__all__ = [
    "CELL_STORE_SUFFIX",
    "PARTIAL_SUFFIX",
    "SCHEMA_VERSION",
    "CellStore",
    "StoredCell",
    "partial_path",
]

#: The store of slide ``<name>`` is ``<name>.cells.sqlite``.
CELL_STORE_SUFFIX = ".cells.sqlite"
#: The store under construction is ``<name>.cells.sqlite.partial``.
PARTIAL_SUFFIX = ".partial"
#: Bumped when the tables change; a store of another version is not resumed or read.
SCHEMA_VERSION = 1

_CELL_COLUMNS = (
    "cell_id",
    "chunk",
    "tile",
    "category",
    "score",
    "x0",
    "y0",
    "x1",
    "y1",
    "area",
    "centroid_x",
    "centroid_y",
    "perimeter",
    "eccentricity",
    "solidity",
    "mean_r",
    "mean_g",
    "mean_b",
    "geometry",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    chunk INTEGER PRIMARY KEY, first_tile INTEGER NOT NULL, last_tile INTEGER NOT NULL,
    tiles INTEGER NOT NULL, cells INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id INTEGER PRIMARY KEY, chunk INTEGER NOT NULL, tile INTEGER NOT NULL,
    category INTEGER NOT NULL, score REAL NOT NULL,
    x0 REAL NOT NULL, y0 REAL NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL,
    area REAL NOT NULL, centroid_x REAL NOT NULL, centroid_y REAL NOT NULL,
    perimeter REAL NOT NULL, eccentricity REAL NOT NULL, solidity REAL NOT NULL,
    mean_r REAL NOT NULL, mean_g REAL NOT NULL, mean_b REAL NOT NULL,
    geometry TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS cell_boxes USING rtree(cell_id, x0, x1, y0, y1);
"""


def _geometry_text(geometry: object) -> str:
    """A cell's geometry as the store keeps it: the cell's own compact GeoJSON text.

    Raises:
        TypeError: anything but text (the whole chunk is then rolled back).
    """
    if not isinstance(geometry, str):
        raise TypeError(f"a cell's geometry must be GeoJSON text, got {type(geometry).__name__}")
    return geometry


def partial_path(path: str | os.PathLike) -> Path:
    """Where the store that will become ``path`` is built."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


class StoredCell(NamedTuple):
    """One row of the ``cells`` table (see the module docstring for the columns).

    Why a named tuple: the writers read every cell of a slide, and a frozen dataclass's
    ``__init__`` (one ``object.__setattr__`` per column) cost 4 µs a cell, more than SQLite's
    fetching it.
    """

    cell_id: int
    chunk: int
    tile: int
    category: int
    score: float
    x0: float
    y0: float
    x1: float
    y1: float
    area: float
    centroid_x: float
    centroid_y: float
    perimeter: float
    eccentricity: float
    solidity: float
    mean_r: float
    mean_g: float
    mean_b: float
    geometry: str


def _normalised(settings: Mapping) -> dict:
    """Settings as they read back from JSON (tuples become lists), for comparison."""
    return json.loads(json.dumps(dict(settings), sort_keys=True))


class CellStore(Closing):
    """A slide's cell store; build one with :meth:`create`, read a finished one with :meth:`open`.

    Use as a context manager (or call :meth:`close`); :meth:`finish` closes and publishes.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, writable: bool) -> None:
        """Wrap an open connection; use :meth:`create` or :meth:`open` instead."""
        self._db = connection
        self.path = path
        self.writable = writable

    @classmethod
    def create(cls, path: str | os.PathLike, settings: Mapping, resume: bool = False) -> CellStore:
        """Start (or, with ``resume``, reopen) the partial store that will become ``path``.

        Why settings are compared: a resumed run must continue the same plan with the same
        model, or the store would mix two runs; a mismatch is refused, not silently restarted.

        Args:
            path: the final ``<name>.cells.sqlite`` path; work goes to :func:`partial_path`.
            settings: JSON-serialisable description of the run (slide, scale, tiling, plan,
                model); stored, and compared on resume.
            resume: keep the finished chunks of an existing partial store. Without it an
                existing partial store is deleted first.

        Raises:
            CellDataError: resuming a partial store of other settings or another schema.
        """
        path = Path(path)
        work = partial_path(path)
        work.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            for stale in (work, Path(f"{work}-journal")):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        # not bound to this thread: the slide loop writes chunks from its hand-over thread
        # (one thread at a time uses a store)
        connection = sqlite3.connect(work, isolation_level=None, check_same_thread=False)
        store = cls(connection, path, writable=True)
        try:
            connection.execute("PRAGMA journal_mode=DELETE")
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
            wanted = _normalised(settings)
            stored = store._meta("settings")
            if stored is None:
                store._transaction(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("settings", json.dumps(wanted, sort_keys=True)),
                        ("schema", str(SCHEMA_VERSION)),
                        ("finished", "0"),
                    ],
                )
            else:
                store._check(stored, wanted, work)
        except BaseException:
            connection.close()
            raise
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> CellStore:
        """Open a finished store read-only (for the writers and for queries).

        Raises:
            CellDataError: no such file, not a finished store, or another schema.
        """
        path = Path(path)
        if not path.is_file():
            raise CellDataError(f"{path}: no cell store there")
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        store = cls(connection, path, writable=False)
        try:
            if store._meta("schema") != str(SCHEMA_VERSION) or store._meta("finished") != "1":
                raise CellDataError(
                    f"{path}: not a finished cell store of schema {SCHEMA_VERSION}; predict the "
                    "slide again"
                )
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise CellDataError(f"{path}: not a cell store ({exc})") from exc
        except BaseException:
            connection.close()
            raise
        return store

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _check(self, stored: str, wanted: dict, where: Path) -> None:
        if self._meta("schema") != str(SCHEMA_VERSION):
            raise CellDataError(f"{where}: cell store of another schema; run without resume")
        if json.loads(stored) != wanted:
            old = json.loads(stored)
            differ = sorted(k for k in set(old) | set(wanted) if old.get(k) != wanted.get(k))
            raise CellDataError(
                f"{where}: made with other settings ({', '.join(differ)} differ); run without "
                "resume to start over"
            )

    def _transaction(self, sql: str, rows: Sequence[tuple]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @property
    def settings(self) -> dict:
        """The run's settings as stored (see :meth:`create`)."""
        return json.loads(self._meta("settings") or "{}")

    def check_settings(self, settings: Mapping) -> None:
        """Refuse a store made with other settings than ``settings``.

        Raises:
            CellDataError: they differ.
        """
        self._check(self._meta("settings") or "{}", _normalised(settings), self.path)

    def finished_chunks(self) -> int:
        """How many chunks are written; they are always chunks ``0 .. n - 1``."""
        return int(self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def write_chunk(self, chunk: int, tiles: Sequence[int], cells: Sequence[SlideCell]) -> None:
        """Write one chunk's cells and mark the chunk finished, all in one transaction.

        Args:
            chunk: the chunk number; must be the next one (chunks go in order, which keeps
                the cell ids of a resumed run equal to an uninterrupted one).
            tiles: indices of the chunk's tiles, for the record.
            cells: its cells, in the order their ids are given.

        Raises:
            ValueError: ``chunk`` is not the next chunk, or the store is read-only.
        """
        if not self.writable:
            raise ValueError(f"{self.path} is open read-only")
        expected = self.finished_chunks()
        if chunk != expected:
            raise ValueError(f"chunk {chunk} written out of order (next is {expected})")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            first_id = self._db.execute("SELECT IFNULL(MAX(cell_id), 0) FROM cells").fetchone()[0]
            rows = []
            for offset, cell in enumerate(cells):
                x0, y0, x1, y1 = cell.box
                rows.append(
                    (
                        first_id + 1 + offset,
                        chunk,
                        cell.tile,
                        cell.category,
                        cell.score,
                        x0,
                        y0,
                        x1,
                        y1,
                        cell.area,
                        cell.centroid_x,
                        cell.centroid_y,
                        cell.perimeter,
                        cell.eccentricity,
                        cell.solidity,
                        *cell.mean_rgb,
                        _geometry_text(cell.geometry),
                    )
                )
            self._db.executemany(
                f"INSERT INTO cells VALUES ({', '.join('?' * len(_CELL_COLUMNS))})", rows
            )
            self._db.executemany(
                "INSERT INTO cell_boxes VALUES (?, ?, ?, ?, ?)",
                [(r[0], r[5], r[7], r[6], r[8]) for r in rows],
            )
            self._db.execute(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?)",
                (chunk, min(tiles, default=-1), max(tiles, default=-1), len(tiles), len(rows)),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def finish(self) -> Path:
        """Mark the store finished, close it and rename it to its final name (atomic).

        Returns:
            The final path.
        """
        if not self.writable:
            raise ValueError(f"{self.path} is open read-only")
        self._transaction("UPDATE meta SET value = ? WHERE key = ?", [("1", "finished")])
        self.close()
        os.replace(partial_path(self.path), self.path)
        return self.path

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM cells").fetchone()[0])

    def class_counts(self) -> dict[int, int]:
        """``{category: cells}`` over the store (0-based categories)."""
        query = "SELECT category, COUNT(*) FROM cells GROUP BY category ORDER BY category"
        return {int(c): int(n) for c, n in self._db.execute(query)}

    def iter_cells(self, batch_size: int = 2048, after: int = 0) -> Iterator[StoredCell]:
        """Every cell in ``cell_id`` order (those with ids above ``after``: the cells written
        since, found by the primary key), fetched ``batch_size`` rows at a time."""
        cursor = self._db.execute(
            f"SELECT {', '.join(_CELL_COLUMNS)} FROM cells WHERE cell_id > ? ORDER BY cell_id",
            (after,),
        )
        while rows := cursor.fetchmany(batch_size):
            yield from map(StoredCell._make, rows)

    def cells_in(self, x0: float, y0: float, x1: float, y1: float) -> Iterator[StoredCell]:
        """Cells whose box overlaps a level-0 region (offset not added), by ``cell_id``.

        Uses the R-tree, so the cost grows with the cells found, not with the slide. The
        R-tree stores 32-bit bounds rounded outwards; the exact boxes then decide.
        """
        columns = ", ".join(f"c.{name}" for name in _CELL_COLUMNS)
        cursor = self._db.execute(
            f"SELECT {columns} FROM cell_boxes b JOIN cells c ON c.cell_id = b.cell_id "
            "WHERE b.x1 > ? AND b.x0 < ? AND b.y1 > ? AND b.y0 < ? "
            "AND c.x1 > ? AND c.x0 < ? AND c.y1 > ? AND c.y0 < ? ORDER BY c.cell_id",
            (x0, x1, y0, y1) * 2,
        )
        for row in cursor:
            yield StoredCell(*row)

    def close(self) -> None:
        """Close the connection (a partial store stays resumable)."""
        self._db.close()
