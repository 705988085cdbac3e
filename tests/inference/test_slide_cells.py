"""Tests for cellseg_d2.inference.slide_cells: cells made in worker processes, same results."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_cells import TileCellsPool, _single_threaded, auto_cell_workers
from cellseg_d2.inference.slide_predict import predict_slide, slide_output_paths
from cellseg_d2.inference.slide_stitch import tile_cells
from cellseg_d2.inference.slide_tiles import SlideTile
from tests.inference.slide_fakes import DiscPredictor, make_canvas, open_npz_slide, save_slide


def _tile(index: int, size: int = 32) -> SlideTile:
    x = index * size
    return SlideTile(index, 0, index, x, 0, size, size, 0, 1.0, size, size, size, size,
                     (x, 0, x + size, size))  # fmt: skip


def _detections(seed: int) -> list[Detection]:
    rng = np.random.default_rng(seed)
    return [
        Detection(
            int(rng.integers(2)),
            0.9,
            int(rng.integers(0, 20)),
            int(rng.integers(0, 20)),
            rng.random((8, 9)) < 0.7,
        )  # fmt: skip
        for _ in range(5)
    ]


def test_auto_workers_use_idle_cores_on_a_gpu_only() -> None:
    assert auto_cell_workers("cpu", 2, cpu_count=16) == 0
    assert auto_cell_workers("cuda", 2, cpu_count=16) == 4
    assert auto_cell_workers("cuda:1", 2, cpu_count=4) == 1
    assert auto_cell_workers("cuda", 4, cpu_count=2) == 0


def test_workers_give_the_loops_cells_in_submission_order() -> None:
    image = np.random.default_rng(9).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    work = [(_tile(i), _detections(i), image) for i in range(6)]
    expected = [(tile.index, tile_cells(tile, dets, img)) for tile, dets, img in work]
    for workers in (0, 1):
        with TileCellsPool(workers, max_pending=2) as pool:
            got = []
            for item in work:
                pool.submit(*item)
                got.extend((tile.index, cells) for tile, cells in pool.ready())
            got.extend((tile.index, cells) for tile, cells in pool.drain())
        assert got == expected
    with pytest.raises(ValueError, match="0 or more"):
        TileCellsPool(-1)


def test_a_workers_error_reaches_the_caller() -> None:
    broken = [Detection(0, 0.9, 20, 20, np.ones((16, 16), bool))]  # runs off the 32 px tile
    with TileCellsPool(1) as pool:
        pool.submit(_tile(0), broken, np.zeros((32, 32, 3), np.uint8))
        with pytest.raises(ValueError, match="runs off the 32x32 image"):
            list(pool.drain())


def _store_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM cells ORDER BY cell_id").fetchall()


def test_a_slide_with_cell_workers_equals_the_loop_also_after_a_crash(tmp_path: Path) -> None:
    canvas, _ = make_canvas(extra=((56, 56), (104, 56), (56, 104), (152, 152)))
    slide = save_slide(tmp_path / "slide.npz", canvas)
    options = dict(
        model_pixel_size=None, tile_size=64, overlap=16, batch_size=2, num_workers=0,
        tissue="none", chunk_tiles=3, progress=False,
    )  # fmt: skip
    loop = predict_slide(slide, open_npz_slide, DiscPredictor(), tmp_path / "a", **options)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_slide(slide, open_npz_slide, DiscPredictor(fail_after=3), tmp_path / "b",
                      cell_workers=2, **options)  # fmt: skip
    pooled = predict_slide(
        slide, open_npz_slide, DiscPredictor(), tmp_path / "b", cell_workers=2, resume=True,
        **options,
    )  # fmt: skip
    # the chunks finished before the crash (tiles 0-5) are kept, whatever the workers did
    assert pooled.resumed_tiles == 6 and pooled.cells == loop.cells > 0
    assert _store_rows(pooled.store) == _store_rows(loop.store)
    a, b = slide_output_paths(tmp_path / "a", slide), slide_output_paths(tmp_path / "b", slide)
    assert a["geojson"].read_bytes() == b["geojson"].read_bytes()
    assert a["csv"].read_bytes() == b["csv"].read_bytes()


def test_a_cell_worker_starts_with_its_imports_frozen_out_of_the_collector() -> None:
    """What a worker imported (torch, OpenCV, ...) is never scanned by the garbage collector's
    full passes, which the outlines' many small lists set off."""
    try:
        _single_threaded()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
