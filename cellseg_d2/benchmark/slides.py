"""Memory and speed of whole-slide prediction on synthetic slides (``--slides 10000,40000``).

Why: a slide of 40,000² pixels must be predicted in the same memory as one of 10,000², and
reading tiles and writing cells must keep up with the model. This runs the real loop
(:func:`~cellseg_d2.inference.slide_predict.predict_slide`: tissue thumbnail, tile plan,
DataLoader workers, stitching, the SQLite cell store, GeoJSON and CSV) on slides that are
generated tile by tile (never held whole), with the network replaced by a predictor that finds
the slide's discs and then sleeps until ``model_ms`` per tile have passed. The slide and the
disc finder are in :mod:`~cellseg_d2.benchmark.synthetic_slide`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellseg_d2.benchmark.machine import ProcessTreeMemory, descendants
from cellseg_d2.benchmark.synthetic_slide import (
    DISC_PITCH,
    find_discs,
    open_synthetic_slide,
    synthetic_slide_name,
)
from cellseg_d2.inference import slide_cells, slide_loader
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_predict import predict_slide
from cellseg_d2.inference.slide_writers import DEFAULT_SLIDE_FORMATS
from cellseg_d2.utils.processes import start_worker_server as start_server

__all__ = [
    "DiscSleepPredictor",
    "measure_slide_benchmark",
    "start_worker_server",
]


class DiscSleepPredictor:
    """Stands in for a model of ``model_ms`` per tile: finds the discs (:func:`find_discs`),
    then sleeps until ``model_ms`` per tile of the batch have passed since the call began.

    The sleep releases the GIL, as a model on a GPU does, so the reading thread can work.
    Records ``tiles``, ``model_seconds`` (time inside calls), ``model_cpu_seconds`` (CPU time
    of finding the discs: what a model on a GPU would not take from the cores) and the first
    call's start and the last call's end (``time.perf_counter``), which separate setup and
    final writing from the tile loop.
    """

    def __init__(self, model_ms: float = 50.0) -> None:
        self.model_ms = model_ms
        self.tiles = 0
        self.model_seconds = 0.0
        self.model_cpu_seconds = 0.0
        self.first_start: float | None = None
        self.last_end: float | None = None

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """One list of detections per tile, after ``model_ms`` per tile."""
        start = time.perf_counter()
        if self.first_start is None:
            self.first_start = start
        cpu = time.thread_time()
        outputs = [find_discs(image) for image in images]
        self.model_cpu_seconds += time.thread_time() - cpu
        remaining = start + self.model_ms * len(images) / 1000.0 - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        self.last_end = time.perf_counter()
        self.tiles += len(images)
        self.model_seconds += self.last_end - start
        return outputs


def _nothing() -> None:
    """A process that only starts: it waits for the fork server's imports."""


def start_worker_server(workers: bool) -> set[int]:
    """Start the workers' fork server now (when there are workers), wait until it serves, and
    return its processes.

    Why: the server is started by the first slide and serves the next ones. Counted only in
    the slide that started it, it would make memory look larger, and the start slower (its
    imports of torch and OpenCV, once per run: 2-4 s here), for the first size than for the
    others. Started here, before any slide, its memory is counted in every slide (``keep``)
    and its start in none (the report gives it apart).
    """
    if not workers:
        return set()
    before = set(descendants(os.getpid()))
    context = start_server([slide_loader.__name__, slide_cells.__name__])
    if context.get_start_method() == "forkserver":
        first = context.Process(target=_nothing)
        first.start()
        first.join()
    return set(descendants(os.getpid())) - before


def _one_slide(
    size: int,
    pitch: int,
    model_ms: float,
    tmp: Path,
    options: dict[str, Any],
    server: set[int],
) -> dict[str, float | int]:
    """Predict one synthetic slide of ``size``² px under :class:`ProcessTreeMemory`."""
    path = tmp / synthetic_slide_name(size, size, pitch)
    expected = open_synthetic_slide(path).disc_counts
    predictor = DiscSleepPredictor(model_ms)
    started = time.perf_counter()
    with ProcessTreeMemory(keep=server) as memory:
        summary = predict_slide(path, open_synthetic_slide, predictor, tmp / "out", **options)
    ended = time.perf_counter()
    seconds = ended - started
    first = predictor.first_start if predictor.first_start is not None else started
    last = predictor.last_end if predictor.last_end is not None else started
    output_mib = sum(p.stat().st_size for p in (tmp / "out").iterdir()) / 2**20
    for file in (tmp / "out").iterdir():  # the next slide needs the disk, not these
        file.unlink()
    return {
        "width": size,
        "height": size,
        "grid_tiles": summary.grid_tiles,
        "tiles": summary.predicted_tiles,
        "cells": summary.cells,
        "expected_cells": sum(expected),
        "seconds": seconds,
        "tiles_per_s": summary.predicted_tiles / seconds,
        "model_seconds": predictor.model_seconds,
        "efficiency": predictor.model_seconds / seconds,
        "seconds_before_first_tile": first - started,
        "loop_seconds_outside_model": (last - first) - predictor.model_seconds,
        "cores_busy": memory.cpu_seconds / seconds,
        "fake_model_cpu_ms_per_tile": 1000 * predictor.model_cpu_seconds / max(1, predictor.tiles),
        "pipeline_cpu_ms_per_tile": 1000
        * (memory.cpu_seconds - predictor.model_cpu_seconds)
        / max(1, predictor.tiles),
        "seconds_after_last_tile": ended - last,
        "peak_rss_main_mib": memory.main_peak_mib,
        "peak_rss_workers_mib": max(memory.worker_peaks_mib.values(), default=0.0),
        "workers_seen": len(memory.worker_peaks_mib),
        "peak_rss_total_mib": memory.total_rss_peak_mib,
        "peak_pss_total_mib": memory.total_pss_peak_mib,
        "output_mib": output_mib,
    }


def measure_slide_benchmark(
    sizes: Sequence[int] = (10000, 40000),
    model_ms: float = 50.0,
    tile_size: int = 1024,
    overlap: int = 128,
    batch_size: int = 4,
    num_workers: int = 2,
    tissue: str = "auto",
    formats: Sequence[str] = DEFAULT_SLIDE_FORMATS,
    pitch: int = DISC_PITCH,
    cell_workers: int = 0,
) -> dict[str, dict[str, Any]]:
    """Peak memory, tiles/s and how much of the time the model works, per square slide size.

    Why: memory must stay flat in the slide's size (only tiles in flight and one chunk of cells
    are held), and reading and writing must hide behind the model. ``efficiency`` is the time
    spent inside the model's calls over the whole call's wall time (1.0: the model never waited
    for a tile nor for the writing). Each slide runs in its own temporary folder, one after the
    other in this process; the memory figures cover this process, its reading and cell workers
    and their fork server.

    Args:
        sizes: sides of the square synthetic slides, in level-0 pixels.
        model_ms: milliseconds the fake model takes per tile.
        tile_size, overlap, batch_size, num_workers, tissue, formats: as for
            :func:`~cellseg_d2.inference.slide_predict.predict_slide` (the slide's pixel size is
            the model's: tiles are read at level 0, unresized).
        pitch: level-0 pixels between disc centres (cells per tile: ``(tile_size / pitch)²``).
        cell_workers: processes outlining and measuring cells beside the model
            (:class:`~cellseg_d2.inference.slide_cells.TileCellsPool`).

    Returns:
        A section ``slide_<size>`` per size (tiles, cells and expected cells, seconds,
        tiles_per_s, model_seconds, efficiency, the seconds before the first tile, between the
        first and the last outside the model (stitching, storing, waiting for tiles) and after
        the last one (last chunk, GeoJSON, CSV); ``cores_busy`` (CPU seconds of all processes
        over wall seconds: near the core count, the machine is the limit), the fake model's CPU
        ms per tile and the rest's (``pipeline_cpu_ms_per_tile``: reading, cells, stitching,
        storing, writing; a model on a GPU leaves the cores to it); peak RSS of this process, of
        the largest worker
        and of all together (:class:`~cellseg_d2.benchmark.machine.ProcessTreeMemory`), peak
        PSS of all together, MiB written) and a ``slides`` section with the settings, the
        machine's CPU count, the seconds the workers' fork server took to start and import
        (once per run, before the slides) and ``peak_rss_total_ratio`` (largest over smallest
        total peak).
    """
    if not sizes or min(sizes) < 1:
        raise ValueError(f"slide sizes must be positive, got {list(sizes)}")
    options = dict(
        model_pixel_size=None,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        num_workers=num_workers,
        tissue=tissue,
        formats=tuple(formats),
        progress=False,
        cell_workers=cell_workers,
    )
    report: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    server = start_worker_server(num_workers > 0 or cell_workers > 0)
    server_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="cellseg_slides_") as tmp:
        for size in sizes:
            report[f"slide_{size}"] = _one_slide(size, pitch, model_ms, Path(tmp), options, server)
    peaks = [section["peak_rss_total_mib"] for section in report.values()]
    report["slides"] = {
        "model_ms_per_tile": model_ms,
        "disc_pitch": pitch,
        "tile_size": tile_size,
        "overlap": overlap,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "cell_workers": cell_workers,
        "tissue": tissue,
        "formats": ",".join(formats),
        "cpu_count": os.cpu_count(),
        "worker_server_start_s": server_seconds,
        "peak_rss_total_ratio": max(peaks) / min(peaks),
    }
    return report
