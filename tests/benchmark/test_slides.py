"""The whole-slide benchmark: the synthetic slide, its fake model, the measurement and the flag."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.benchmark.slides import (
    DISC_RGB,
    DiscSleepPredictor,
    SyntheticSlide,
    find_discs,
    measure_slide_benchmark,
    open_synthetic_slide,
    start_worker_server,
    synthetic_slide_name,
)
from cellseg_d2.data.slide_base import SlideReader
from cellseg_d2.inference.slide_tiles import plan_slide_tiles
from tests.conftest import REPO_ROOT, load_tool


def test_synthetic_slide_opens_by_name_with_a_pyramid() -> None:
    slide = open_synthetic_slide(Path("/nowhere") / synthetic_slide_name(2048, 1024, 96))
    assert isinstance(slide, SlideReader) and slide.pitch == 96
    assert (slide.info.width, slide.info.height) == (2048, 1024)
    assert slide.info.level_downsamples == (1.0, 4.0, 16.0, 64.0)
    assert slide.info.level_dimensions[-1] == (32, 16)
    assert synthetic_slide_name(10, 20) == "synthetic-10x20.slide"  # default pitch unnamed
    assert open_synthetic_slide("synthetic-10x20.slide").pitch == 64
    assert pickle.loads(pickle.dumps(open_synthetic_slide)) is open_synthetic_slide
    with pytest.raises(ValueError, match="not a synthetic slide"):
        open_synthetic_slide("slide.svs")
    with pytest.raises(ValueError, match="pitch"):
        SyntheticSlide(100, 100, pitch=23)


def test_synthetic_slide_is_a_function_of_position() -> None:
    slide = SyntheticSlide(1024, 768)
    whole = slide.read_region(0, 0, 0, 1024, 768)
    assert np.array_equal(slide.read_region(300, 200, 0, 400, 300), whole[200:500, 300:700])
    assert np.array_equal(whole, SyntheticSlide(1024, 768).read_region(0, 0, 0, 1024, 768))
    assert (whole[:64] == 255).all() and (whole[:, -64:] == 255).all()  # a glass margin
    beyond = slide.read_region(1000, 0, 0, 50, 10)
    assert (beyond[:, 24:] == 255).all()  # outside the slide: white
    coarse = slide.read_region(0, 0, 1, 256, 192)  # level 4x samples the level-0 centres
    assert np.mean(coarse != whole[1::4, 1::4]) < 0.01


def test_synthetic_slide_draws_the_rule_at_every_level() -> None:
    # the rule, pixel by pixel: glass outside [margin, size - margin), tissue inside, a disc of
    # DISC_RADIUS around each grid centre k * pitch + pitch / 2 of the disc range, coloured by
    # the checkerboard parity of its grid index; a coarse pixel shows the level-0 pixel at its
    # centre. The reader draws it from a table of row and column kinds: it must agree.
    slide = SyntheticSlide(700, 500, pitch=48)
    (fx, nx), (fy, ny) = slide.discs_x, slide.discs_y
    for level, d in enumerate(slide.info.level_downsamples[:2]):
        x, y, w, h = 37, 11, int(640 // d), int(480 // d)
        got = slide.read_region(x, y, level, w, h)
        u = (x // int(d) + np.arange(w)) * d + (d - 1) / 2
        v = (y // int(d) + np.arange(h)) * d + (d - 1) / 2
        expected = np.empty((h, w, 3), np.uint8)
        for i, vy in enumerate(v):
            for j, ux in enumerate(u):
                inside = slide.margin <= min(ux, vy) and max(ux - 700, vy - 500) < -slide.margin
                kx, ky = int(ux // 48), int(vy // 48)
                on_disc = (ux - kx * 48 - 24) ** 2 + (vy - ky * 48 - 24) ** 2 <= 10**2
                on_disc &= fx <= kx < fx + nx and fy <= ky < fy + ny
                colour = DISC_RGB[(kx + ky) % 2] if on_disc else (230, 180, 205)
                expected[i, j] = colour if inside else (255, 255, 255)
        assert np.array_equal(got, expected), level


def test_find_discs_counts_the_slide_by_class() -> None:
    slide = SyntheticSlide(1280, 1024)
    bgr = np.ascontiguousarray(slide.read_region(0, 0, 0, 1280, 1024)[:, :, ::-1])
    detections = find_discs(bgr)
    counts = (sum(d.category == 0 for d in detections), sum(d.category == 1 for d in detections))
    assert counts == slide.disc_counts and sum(counts) == 18 * 14
    assert {d.mask.shape for d in detections} == {(21, 21)}
    first = min(detections, key=lambda d: (d.top, d.left))
    rgb = bgr[first.top + 10, first.left + 10, ::-1]
    assert tuple(rgb) == DISC_RGB[first.category]


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
