"""plan_slide: the plan and settings a one-process run stores, chunks as the store writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellseg_d2.errors import ConfigError
from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.inference.slide_plan import plan_slide
from cellseg_d2.inference.slide_predict import predict_slide
from tests.inference.slide_fakes import DiscPredictor, make_canvas, open_npz_slide, save_slide


def test_plan_is_what_predict_slide_stores(tmp_path: Path) -> None:
    canvas, _ = make_canvas()
    slide = save_slide(tmp_path / "s.npz", canvas)
    options = dict(model_pixel_size=None, tile_size=64, overlap=16, tissue="none", chunk_tiles=4)
    plan = plan_slide(slide, open_npz_slide, tmp_path, **options)
    assert [len(c) for c in plan.chunks][:-1] == [4] * (len(plan.chunks) - 1)
    assert [t for c in plan.chunks for t in c] == plan.tiles
    summary = predict_slide(
        slide, open_npz_slide, DiscPredictor(), tmp_path, num_workers=0, progress=False, **options
    )
    assert summary.store == plan.paths["store"] and summary.tissue_tiles == len(plan.tiles)
    with CellStore.open(summary.store) as store:
        assert store.settings == plan.settings
        assert store.finished_chunks() == len(plan.chunks)
    with pytest.raises(ConfigError, match="chunk_tiles 0"):
        plan_slide(slide, open_npz_slide, tmp_path, **{**options, "chunk_tiles": 0})
