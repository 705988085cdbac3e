"""Chunk shards: exact round trip of cells, bad shards named, resume lists what is left."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.slide_plan import plan_slide
from cellseg_d2.inference.slide_shards import (
    SETTINGS_NAME,
    prepare_slide_shards,
    read_chunk_shard,
    shard_path,
    slide_work_dir,
    write_chunk_shard,
)
from cellseg_d2.inference.slide_stitch import tile_cells
from tests.inference.slide_fakes import DiscPredictor, make_canvas, open_npz_slide, save_slide


def _plan(tmp_path: Path, **options):
    canvas, _ = make_canvas()
    slide = save_slide(tmp_path / "slide.npz", canvas)
    settings = dict(model_pixel_size=None, tile_size=64, overlap=16, tissue="none", chunk_tiles=3)
    settings.update(options)
    return plan_slide(slide, open_npz_slide, tmp_path / "out", **settings)


def test_cells_come_back_exactly_and_a_bad_shard_is_named(tmp_path: Path) -> None:
    # a model at 0.8 um/px on a 0.5 um/px slide: level-0 coordinates are fractions
    plan = _plan(tmp_path, model_pixel_size=0.8)
    reader = open_npz_slide(plan.reader_path)
    tile = plan.tiles[0]
    image = np.ascontiguousarray(
        reader.read_region(tile.x, tile.y, tile.level, tile.read_width, tile.read_height)[..., ::-1]
    )
    cells = tile_cells(tile, DiscPredictor.detect(image), image)
    assert cells and any(c.box[0] != int(c.box[0]) for c in cells)
    path = shard_path(tmp_path, 7)
    write_chunk_shard(path, "digest", 7, [tile.index], cells)
    assert read_chunk_shard(path, "digest", 7, [tile.index]) == cells
    with pytest.raises(CellDataError, match="another plan or chunk"):
        read_chunk_shard(path, "other", 7, [tile.index])
    path.write_text(path.read_text().replace('"cells":[[', '"cells":[["x",', 1))
    with pytest.raises(CellDataError, match=f"{path}: malformed cell row 0"):
        read_chunk_shard(path, "digest", 7, [tile.index])
    path.write_text(path.read_text()[:50])
    with pytest.raises(CellDataError, match=f"{path}: unreadable JSON"):
        read_chunk_shard(path, "digest", 7, [tile.index])


def test_resume_lists_missing_and_bad_chunks_and_refuses_other_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = _plan(tmp_path)
    chunks = plan.chunks
    assert len(chunks) > 3
    assert prepare_slide_shards(plan, resume=False, owner=True) == list(range(len(chunks)))
    work = slide_work_dir(plan.paths["store"])
    assert work.name == "slide.cells.sqlite.partial.d" and (work / SETTINGS_NAME).is_file()
    for chunk in (0, 1, 2):
        members = [t.index for t in chunks[chunk]]
        write_chunk_shard(shard_path(work, chunk), plan.settings["plan"], chunk, members, [])
    shard_path(work, 1).write_text("{")  # truncated
    (work / ".chunk-000003.json.abc123.tmp").write_text("half")  # a killed rank's leftover
    # other machines only read: the bad shard stays, but is listed as to do
    with caplog.at_level(logging.WARNING, logger="cellseg_d2.inference.slide_shards"):
        todo = prepare_slide_shards(plan, resume=True, owner=False)
    assert todo == [1, *range(3, len(chunks))]
    assert shard_path(work, 1).is_file()
    assert any(str(shard_path(work, 1)) in message for message in caplog.messages)
    assert prepare_slide_shards(plan, resume=True, owner=True) == todo
    assert not shard_path(work, 1).exists()
    assert not (work / ".chunk-000003.json.abc123.tmp").exists()
    other = _plan(tmp_path, overlap=20)
    with pytest.raises(CellDataError, match=f"{work / SETTINGS_NAME}: made with other settings"):
        prepare_slide_shards(other, resume=True, owner=True)
    assert prepare_slide_shards(other, resume=False, owner=True) == list(range(len(other.chunks)))
    assert not shard_path(work, 0).exists()  # started afresh
