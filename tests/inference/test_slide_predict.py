"""The whole-slide loop on a fake slide of discs: every cell once, at its place, resumable."""

from __future__ import annotations

import csv
import json
import logging
import sqlite3
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellseg_d2.errors import CellDataError, ConfigError
from cellseg_d2.inference import slide_cells
from cellseg_d2.inference.cell_store import CellStore, partial_path
from cellseg_d2.inference.slide_predict import predict_slide, slide_output_paths
from cellseg_d2.inference.slide_tiles import plan_slide_tiles
from cellseg_d2.inference.slide_writers import write_slide_text
from tests.inference.slide_fakes import (
    DiscPredictor,
    FakeSlideReader,
    make_canvas,
    open_npz_slide,
    save_slide,
)

# Centres (row, column) on the core boundaries of the 64/16 grid (x 56, 104, 152; y 56, 104)
# and on window edges (x 48, 64, 112): cut by some tile, whole in another.
SEAM_DISCS = ((56, 56), (104, 56), (56, 104), (152, 152), (30, 150), (80, 64), (180, 112))


class Opener:
    """``open_reader`` over an in-memory canvas that remembers every reader it opened."""

    def __init__(self, canvas: np.ndarray, pixel_size_um: float | None = 0.5) -> None:
        self.canvas, self.pixel_size_um = canvas, pixel_size_um
        self.readers: list[FakeSlideReader] = []

    def __call__(self, path: str) -> FakeSlideReader:
        self.readers.append(FakeSlideReader(path, self.canvas, self.pixel_size_um))
        return self.readers[-1]

    @property
    def reads(self) -> list[tuple[int, int, int, int, int]]:
        return [read for reader in self.readers for read in reader.reads]


@pytest.fixture(autouse=True)
def fake_tissue_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cellseg_d2.data.tissue`` is written in parallel: stand in with its interface."""
    module = types.ModuleType("cellseg_d2.data.tissue")
    module.tissue_mask = lambda rgb: rgb.min(axis=2) < 250  # anything not white glass
    module.tissue_area_mm2 = lambda mask, downsample, pixel: (
        float(mask.sum()) * (downsample * pixel) ** 2 / 1e6
    )
    monkeypatch.setitem(sys.modules, "cellseg_d2.data.tissue", module)


def _run(tmp_path: Path, opener, **kwargs) -> tuple:
    options = dict(
        model_pixel_size=None,
        tile_size=64,
        overlap=16,
        batch_size=2,
        num_workers=0,
        tissue="none",
        class_names=["dark", "light"],
        chunk_tiles=3,
        progress=False,
    )
    options.update(kwargs)
    predictor = kwargs.pop("predictor", None) or DiscPredictor()
    options.pop("predictor", None)
    out = tmp_path / "out"
    summary = predict_slide(tmp_path / "slide.svs", opener, predictor, out, **options)
    return summary, predictor, slide_output_paths(out, "slide.svs")


def _cuts(window: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> bool:
    """Whether a tile window cuts a box: they overlap but the box is not inside."""
    wx0, wy0, wx1, wy1 = window
    x0, y0, x1, y1 = box
    overlap = x0 < wx1 and wx0 < x1 and y0 < wy1 and wy0 < y1
    return overlap and not (wx0 <= x0 and x1 <= wx1 and wy0 <= y0 and y1 <= wy1)


def _recorder(function, dropped: list[int]):
    """Wrap :func:`drop_seam_duplicates` to record how many cells it removed per chunk."""

    def wrapped(cells, members):
        kept = function(cells, members)
        dropped.append(len(cells) - len(kept))
        return kept

    return wrapped


def _cells(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT * FROM cells ORDER BY cell_id").fetchall()


def test_scale_one_every_cell_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    canvas, discs = make_canvas(extra=SEAM_DISCS)
    tiles = plan_slide_tiles(FakeSlideReader("s", canvas).info, 1.0, 64, 16)
    windows = [(t.x, t.y, t.x + t.width, t.y + t.height) for t in tiles]
    cut = [d for d in discs if any(_cuts(w, d.box) for w in windows)]
    assert len(cut) >= 20  # the test means something: many cells straddle a tile edge
    dropped = []

    monkeypatch.setattr(
        slide_cells,
        "drop_seam_duplicates",
        _recorder(slide_cells.drop_seam_duplicates, dropped),
    )
    with caplog.at_level(logging.INFO, logger="cellseg_d2.inference.slide_predict"):
        summary, _, paths = _run(tmp_path, Opener(canvas))
    assert summary.line() in caplog.messages
    assert f"slide.svs: {len(discs)} cells (dark " in summary.line()
    assert sum(dropped) == 0  # ownership alone was exact; the safety net had nothing to do
    rows = _cells(paths["store"])
    got = sorted((r[3], tuple(int(v) for v in r[5:9]), r[9]) for r in rows)
    assert got == sorted((d.category, d.box, float(d.area)) for d in discs)
    assert summary.cells == len(discs) and summary.tissue_area_mm2 is None
    assert summary.cells_per_class == {
        "dark": sum(d.category == 0 for d in discs),
        "light": sum(d.category == 1 for d in discs),
    }
    assert [r[0] for r in rows] == list(range(1, len(discs) + 1))
    # GeoJSON and CSV hold the store's cell ids, in the same order
    features = json.loads(paths["geojson"].read_text())["features"]
    with open(paths["csv"], newline="") as handle:
        table = list(csv.DictReader(handle))
    ids = [r[0] for r in rows]
    assert [f["properties"]["measurements"]["cell_id"] for f in features] == ids
    assert [int(r["cell_id"]) for r in table] == ids
    assert summary.outputs == {"geojson": paths["geojson"], "csv": paths["csv"]}


@pytest.mark.parametrize(
    ("slide_um", "model_um", "tile", "overlap", "level"),
    [(0.5, 0.25, 96, 32, 0), (0.25, 0.5, 64, 16, 1)],
)
def test_other_scales_return_cells_at_level0_places(
    tmp_path: Path, slide_um: float, model_um: float, tile: int, overlap: int, level: int
) -> None:
    canvas, discs = make_canvas(extra=SEAM_DISCS, gap=10, count=40)
    opener = Opener(canvas, pixel_size_um=slide_um)
    summary, _, paths = _run(
        tmp_path, opener, model_pixel_size=model_um, tile_size=tile, overlap=overlap
    )
    assert summary.scale == slide_um / model_um and summary.level == level
    assert {read[2] for read in opener.reads} == {level}
    rows = _cells(paths["store"])
    assert len(rows) == len(discs)
    centres = np.array([(r[10], r[11]) for r in rows])
    for disc in discs:
        # disc centres are pixel indices; stored centroids put pixel centres at +0.5 (QuPath)
        distance = np.hypot(centres[:, 0] - disc.cx - 0.5, centres[:, 1] - disc.cy - 0.5)
        nearest = int(distance.argmin())
        assert distance[nearest] < 0.75, (disc, rows[nearest])
        assert rows[nearest][3] == disc.category
        assert rows[nearest][9] == pytest.approx(disc.area, rel=0.3)


def test_tissue_mask_skips_background_reads_and_loses_nothing(tmp_path: Path) -> None:
    canvas, discs = make_canvas(extra=SEAM_DISCS)
    everything = Opener(canvas)
    _, _, paths = _run(tmp_path / "all", everything)
    tissue_only = Opener(canvas)
    summary, _, tissue_paths = _run(tmp_path / "tissue", tissue_only, tissue="auto")
    assert summary.grid_tiles == len(everything.reads) == 35
    # columns starting at x 240 and 256 read glass only (tissue ends at x 200)
    assert summary.tissue_tiles == len(tissue_only.reads) == 25
    assert all(x < 200 for x, *_ in tissue_only.reads)
    assert summary.tissue_area_mm2 == pytest.approx(200 * 256 * 0.25 / 1e6)
    # the same cells with the same ids (chunks differ: they group the tiles actually read)
    without_chunk = [row[:1] + row[2:] for row in _cells(tissue_paths["store"])]
    assert without_chunk == [row[:1] + row[2:] for row in _cells(paths["store"])]
    # a mask file works the same (any size with the slide's aspect)
    mask = np.zeros((64, 80), np.uint8)
    mask[:, :50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    from_file = Opener(canvas)
    summary, _, _ = _run(tmp_path / "file", from_file, tissue=tmp_path / "mask.png")
    assert summary.tissue_tiles == len(from_file.reads) == 25


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    canvas, _ = make_canvas(extra=SEAM_DISCS)
    _, _, whole = _run(tmp_path / "whole", Opener(canvas))
    # batches of 2, chunks of 3: the 4th call (tiles 6-7) fails, chunks 0 and 1 are in
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "stopped", Opener(canvas), predictor=DiscPredictor(fail_after=3))
    stopped = slide_output_paths(tmp_path / "stopped" / "out", "slide.svs")
    assert not stopped["store"].exists() and not stopped["geojson"].exists()
    with sqlite3.connect(partial_path(stopped["store"])) as db:
        assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 2
    summary, predictor, paths = _run(tmp_path / "stopped", Opener(canvas), resume=True)
    assert (summary.resumed_tiles, summary.predicted_tiles) == (6, 29)
    assert predictor.calls == 15
    assert _cells(paths["store"]) == _cells(whole["store"])
    assert paths["geojson"].read_text() == whole["geojson"].read_text()
    assert paths["csv"].read_text() == whole["csv"].read_text()
    # the files streamed during the loop are the ones one pass over the finished store writes
    with CellStore.open(whole["store"]) as store:
        names = ["dark", "light"]  # as _run gives them
        g, c = tmp_path / "g.geojson", tmp_path / "c.csv"
        write_slide_text(store, {"geojson": g, "csv": c}, names, "slide.svs")
    assert g.read_bytes() == whole["geojson"].read_bytes()
    assert c.read_bytes() == whole["csv"].read_bytes()
    # resuming a finished store predicts nothing and rewrites the outputs from it
    paths["csv"].unlink()
    summary, predictor, _ = _run(tmp_path / "stopped", Opener(canvas), resume=True)
    assert predictor.calls == 0 and summary.resumed_tiles == 35 and paths["csv"].exists()
    assert paths["csv"].read_bytes() == whole["csv"].read_bytes()
    # other settings are refused, not mixed in
    with pytest.raises(CellDataError, match="overlap"):
        _run(tmp_path / "stopped", Opener(canvas), resume=True, overlap=20)


def test_worker_processes_give_the_same_cells(tmp_path: Path) -> None:
    canvas, _ = make_canvas(extra=SEAM_DISCS)
    _, _, threaded = _run(tmp_path / "a", Opener(canvas))
    path = save_slide(tmp_path / "slide.npz", canvas)
    summary = predict_slide(
        path,
        open_npz_slide,
        DiscPredictor(),
        tmp_path / "b",
        model_pixel_size=None,
        tile_size=64,
        overlap=16,
        batch_size=4,
        num_workers=1,
        tissue="none",
        chunk_tiles=3,
        formats=(),
        progress=True,  # the tqdm bar (stderr) must not disturb anything
    )
    assert summary.outputs == {}
    assert _cells(summary.store) == _cells(threaded["store"])


def test_bad_settings_stop_before_reading(tmp_path: Path) -> None:
    canvas, _ = make_canvas()
    opener = Opener(canvas, pixel_size_um=None)
    with pytest.raises(CellDataError, match="states no pixel size; pass --pixel-size"):
        _run(tmp_path, opener, model_pixel_size=0.25)
    with pytest.raises(ConfigError, match="largest cell"):
        _run(tmp_path, opener, max_cell_size=40)
    with pytest.raises(ConfigError, match="formats"):
        _run(tmp_path, opener, formats=("coco",))
    assert opener.reads == [] and all(reader.closed for reader in opener.readers)
    # an override makes a slide without metadata usable
    summary, _, _ = _run(tmp_path, opener, model_pixel_size=0.5, pixel_size_override=0.5)
    assert summary.scale == 1.0


def test_cells_off_the_tissue_mask_are_dropped(tmp_path: Path) -> None:
    """A tile touching tissue is predicted whole, but only the cells on tissue are kept."""
    canvas, discs = make_canvas()
    everything, _, _ = _run(tmp_path / "all", Opener(canvas))
    mask = np.zeros((32, 40), bool)  # downsample 8 over the 320 x 256 canvas
    mask[:, :12] = True  # tissue in x < 96 (the mask's edge pixel forgiven: x < 104)
    summary, _, paths = _run(tmp_path / "left", Opener(canvas), tissue=(mask, 8.0))
    xs = [row[10] for row in _cells(paths["store"])]  # centroid_x
    assert xs and max(xs) < 104
    assert summary.cells == sum(1 for d in discs if d.cx + 0.5 < 104) < everything.cells
    with sqlite3.connect(paths["store"]) as db:
        (text,) = db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
    settings = json.loads(text)
    assert settings["tissue"] and len(settings["tissue"]) == 16
