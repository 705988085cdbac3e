"""The whole-slide benchmark: its fake model, the measurement and the flag."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.benchmark.slides import (
    DiscSleepPredictor,
    measure_slide_benchmark,
    start_worker_server,
)
from cellseg_d2.benchmark.synthetic_slide import SyntheticSlide
from cellseg_d2.inference.slide_tiles import plan_slide_tiles
from tests.conftest import REPO_ROOT, load_tool


def test_sleep_predictor_takes_model_ms_per_tile() -> None:
    predictor = DiscSleepPredictor(model_ms=20)
    tile = np.full((64, 64, 3), 200, np.uint8)
    start = time.perf_counter()
    assert predictor([tile, tile]) == [[], []]
    assert time.perf_counter() - start >= 0.04 and predictor.model_seconds >= 0.04
    assert predictor.tiles == 2 and predictor.first_start is not None


def test_measure_slide_benchmark_counts_every_tile_and_cell() -> None:
    options = dict(model_ms=0, tile_size=128, overlap=32, batch_size=4, num_workers=0)
    report = measure_slide_benchmark((2048,), tissue="none", pitch=128, **options)
    slide = report["slide_2048"]
    grid = len(plan_slide_tiles(SyntheticSlide(2048, 2048).info, 1.0, 128, 32))
    assert slide["grid_tiles"] == slide["tiles"] == grid == 21 * 21
    assert slide["cells"] == slide["expected_cells"] == 14 * 14
    assert slide["tiles_per_s"] == pytest.approx(slide["tiles"] / slide["seconds"])
    assert 0 < slide["efficiency"] <= 1 and slide["output_mib"] > 0
    assert slide["workers_seen"] == 0 and slide["peak_rss_workers_mib"] == 0
    assert slide["peak_rss_total_mib"] == slide["peak_rss_main_mib"] > 0
    assert slide["peak_pss_total_mib"] > 0
    assert report["slides"]["peak_rss_total_ratio"] == 1.0
    assert report["slides"]["disc_pitch"] == 128 and report["slides"]["tissue"] == "none"
    # the glass margin (128 px) holds whole tiles: the tissue mask skips them, no cell is lost
    again = measure_slide_benchmark((2048,), tissue="auto", pitch=128, **options)["slide_2048"]
    assert again["grid_tiles"] == grid and again["tiles"] == 19 * 19
    assert again["cells"] == slide["cells"]
    with pytest.raises(ValueError, match="positive"):
        measure_slide_benchmark(())


def test_benchmark_slides_flag_writes_the_report(tmp_path: Path) -> None:
    tool = load_tool(REPO_ROOT / "tools" / "benchmark.py")
    output = tmp_path / "slides.json"
    argv = ["--slides", "1024", "--slide-model-ms", "0", "--json", str(output)]
    assert tool.main(tool.parse_args(argv)) == 0
    report = json.loads(output.read_text())
    assert report["slide_1024"]["tiles"] == 1 and report["slides"]["num_workers"] == 2
    assert report["slide_1024"]["cells"] == report["slide_1024"]["expected_cells"] == 14 * 14
    for bad in (["--slides", "10k"], ["--slides", "0"], ["--slides", "64", "--slide-pitch", "7"]):
        with pytest.raises(SystemExit):
            tool.parse_args(bad)


def test_the_worker_server_is_counted_in_every_slide() -> None:
    server = start_worker_server(True)
    assert start_worker_server(False) == set()
    options = dict(model_ms=0, tile_size=512, overlap=32, batch_size=2, num_workers=1)
    report = measure_slide_benchmark((1024, 1536), tissue="none", pitch=128, **options)
    for size in (1024, 1536):
        slide = report[f"slide_{size}"]
        assert slide["cells"] == slide["expected_cells"] > 0
        # the reading worker, and the fork server started before the first slide, in both
        assert slide["workers_seen"] >= 1 + len(server)
