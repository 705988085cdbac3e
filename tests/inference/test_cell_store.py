"""The per-slide SQLite cell store: chunks in order, ids, resume, publish by rename, R-tree."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.cell_store import CellStore, partial_path
from tests.inference.slide_fakes import slide_cell as _cell

SETTINGS = {"slide": "a.svs", "scale": 2.0, "offset": (5, 7), "tiles": 3}


def test_chunks_in_order_ids_and_publish(tmp_path: Path) -> None:
    path = tmp_path / "a.cells.sqlite"
    store = CellStore.create(path, SETTINGS)
    store.write_chunk(0, [0, 1], [_cell(0, 0), _cell(10, 0, tile=1, category=2)])
    with pytest.raises(ValueError, match="out of order"):
        store.write_chunk(2, [4], [])
    store.write_chunk(1, [2], [])
    store.write_chunk(2, [3], [_cell(100.5, 50.25, tile=3)])
    assert not path.exists() and partial_path(path).exists()
    assert store.finish() == path
    assert path.is_file() and not partial_path(path).exists()
    with CellStore.open(path) as done:
        cells = list(done.iter_cells(batch_size=2))
        assert [c.cell_id for c in cells] == [1, 2, 3]
        assert [(c.chunk, c.tile, c.category) for c in cells] == [(0, 0, 0), (0, 1, 2), (2, 3, 0)]
        assert (cells[2].x0, cells[2].y1) == (100.5, 54.25)
        assert done.class_counts() == {0: 2, 2: 1} and len(done) == 3
        assert done.settings["offset"] == [5, 7]
        assert [c.cell_id for c in done.cells_in(9, -1, 12, 2)] == [2]
        assert [c.cell_id for c in done.cells_in(104.4, 54.2, 200, 200)] == [3]
        assert list(done.cells_in(104.5, 0, 200, 50.25)) == []  # touching is not overlapping
        with pytest.raises(ValueError, match="read-only"):
            done.write_chunk(3, [], [])


def test_resume_keeps_finished_chunks_and_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "a.cells.sqlite"
    with CellStore.create(path, SETTINGS) as store:
        store.write_chunk(0, [0], [_cell(0, 0)])
    with CellStore.create(path, SETTINGS, resume=True) as store:
        assert store.finished_chunks() == 1
        store.write_chunk(1, [1], [_cell(9, 9)])
        assert len(store) == 2
    with pytest.raises(CellDataError, match="scale differ"):
        CellStore.create(path, {**SETTINGS, "scale": 1.0}, resume=True)
    with CellStore.create(path, {**SETTINGS, "scale": 1.0}) as store:  # no resume: start over
        assert store.finished_chunks() == 0 and len(store) == 0


def test_failed_chunk_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.cells.sqlite"
    with CellStore.create(path, SETTINGS) as store:
        store.write_chunk(0, [0], [_cell(0, 0)])
        bad = _cell(5, 5)
        object.__setattr__(bad, "geometry", {"type": "Polygon"})  # not text
        with pytest.raises(TypeError):
            store.write_chunk(1, [1], [_cell(1, 1), bad])
        assert store.finished_chunks() == 1 and len(store) == 1
        store.write_chunk(1, [1], [_cell(1, 1)])
        assert [c.cell_id for c in store.iter_cells()] == [1, 2]


def test_open_refuses_unfinished_or_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CellDataError, match="no cell store"):
        CellStore.open(tmp_path / "missing.cells.sqlite")
    path = tmp_path / "a.cells.sqlite"
    with CellStore.create(path, SETTINGS):
        pass
    partial_path(path).rename(path)  # complete name, but never finished
    with pytest.raises(CellDataError, match="not a finished"):
        CellStore.open(path)
    other = tmp_path / "b.cells.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(CellDataError):
        CellStore.open(other)
    (tmp_path / "c.cells.sqlite").write_bytes(b"not sqlite at all" * 10)
    with pytest.raises(CellDataError):
        CellStore.open(tmp_path / "c.cells.sqlite")
