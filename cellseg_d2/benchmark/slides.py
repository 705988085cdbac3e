"""Memory and speed of whole-slide prediction on synthetic slides (``--slides 10000,40000``).

Why: a slide of 40,000² pixels must be predicted in the same memory as one of 10,000², and
reading tiles and writing cells must keep up with the model. This runs the real loop
(:func:`~cellseg_d2.inference.slide_predict.predict_slide`: tissue thumbnail, tile plan,
DataLoader workers, stitching, the SQLite cell store, GeoJSON and CSV) on slides that are
generated tile by tile (never held whole), with the network replaced by a predictor that finds
the slide's discs and then sleeps until ``model_ms`` per tile have passed.

The synthetic slide: white glass around a pink tissue rectangle, on which dark discs (cells)
sit on a regular grid, purple (class 0) and brown (class 1) in a checkerboard. Every pixel is a
pure function of its position, so any process can open the same slide from its name
(``synthetic-40000x40000.slide``) and the expected cells are known exactly.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.forkserver
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellseg_d2.benchmark.machine import ProcessTreeMemory, descendants
from cellseg_d2.data.slide_base import SlideInfo, SlideReader, level_position
from cellseg_d2.inference import slide_cells, slide_loader
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_predict import predict_slide
from cellseg_d2.inference.slide_writers import DEFAULT_SLIDE_FORMATS
from cellseg_d2.utils.processes import worker_context

__all__ = [
    "DISC_PITCH",
    "DISC_RADIUS",
    "MIN_DISC_PITCH",
    "SLIDE_LEVELS",
    "DiscSleepPredictor",
    "SyntheticSlide",
    "find_discs",
    "measure_slide_benchmark",
    "start_worker_server",
    "open_synthetic_slide",
    "synthetic_slide_name",
]

#: Default level-0 pixels between neighbouring disc centres (256 cells per 1024² of tissue).
DISC_PITCH = 64
#: Disc radius in level-0 pixels (21 px wide: well inside a 128 px tile overlap).
DISC_RADIUS = 10
#: The closest disc pitch: neighbouring discs stay apart (4 px of tissue between them).
MIN_DISC_PITCH = 2 * DISC_RADIUS + 4
#: Downsamples of the generated pyramid; the coarse ones serve the tissue thumbnail.
SLIDE_LEVELS = (1, 4, 16, 64)
#: RGB of glass, tissue, and the discs of class 0 and 1.
GLASS_RGB, TISSUE_RGB = (255, 255, 255), (230, 180, 205)
DISC_RGB = ((70, 40, 120), (130, 70, 40))
#: Darkest channel below which a pixel is a disc (tissue's darkest is 180, discs' 40).
_DISC_THRESHOLD = 110
#: µm per level-0 pixel the slide states (a 20x scan).
_PIXEL_SIZE_UM = 0.5
_NAME = re.compile(r"synthetic-(\d+)x(\d+)(?:-p(\d+))?\.slide")


def synthetic_slide_name(width: int, height: int, pitch: int = DISC_PITCH) -> str:
    """The file name :func:`open_synthetic_slide` understands for a slide of this size (and
    disc pitch, named only when it is not :data:`DISC_PITCH`)."""
    suffix = "" if pitch == DISC_PITCH else f"-p{pitch}"
    return f"synthetic-{width}x{height}{suffix}.slide"


def _disc_range(size: int, margin: int, pitch: int) -> tuple[int, int]:
    """``(first grid index, count)`` of the discs wholly inside the tissue along one axis;
    disc ``k`` is centred on level-0 pixel ``k * pitch + pitch // 2``."""
    half = pitch // 2
    first = max(0, math.ceil((margin + DISC_RADIUS - half) / pitch))
    last = math.floor((size - margin - 1 - DISC_RADIUS - half) / pitch)
    return first, max(0, last - first + 1)


class SyntheticSlide(SlideReader):
    """A slide of ``width`` x ``height`` pixels drawn on demand, region by region.

    Tissue covers ``[margin, size - margin)`` on both axes, with ``margin`` a sixteenth of the
    shorter side rounded down to whole disc pitches (at least one); discs ``pitch`` pixels
    apart (even, at least :data:`MIN_DISC_PITCH`) lie wholly inside it.
    A pixel of a coarse level shows the level-0 pixel at its centre (no averaging: the coarse
    levels only feed the tissue thumbnail).
    """

    def __init__(
        self,
        width: int,
        height: int,
        pitch: int = DISC_PITCH,
        path: str | os.PathLike | None = None,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"slide size {width}x{height}: both sides must be >= 1 pixel")
        if pitch % 2 or pitch < MIN_DISC_PITCH:
            raise ValueError(f"disc pitch {pitch}: must be even and >= {MIN_DISC_PITCH}")
        levels = tuple(d for d in SLIDE_LEVELS if d == 1 or min(width, height) // d >= 1)
        super().__init__(
            SlideInfo(
                path=Path(path or synthetic_slide_name(width, height, pitch)),
                width=width,
                height=height,
                level_dimensions=tuple((width // d, height // d) for d in levels),
                level_downsamples=tuple(float(d) for d in levels),
                pixel_size_um=_PIXEL_SIZE_UM,
                offset=(0, 0),
                reader="synthetic",
                vendor="synthetic",
            )
        )
        self.pitch = pitch
        self.margin = pitch * max(1, min(width, height) // (16 * pitch))
        self.discs_x = _disc_range(width, self.margin, pitch)
        self.discs_y = _disc_range(height, self.margin, pitch)

    @property
    def disc_counts(self) -> tuple[int, int]:
        """``(class 0, class 1)`` discs on the slide: the cells a perfect model finds."""
        (fx, nx), (fy, ny) = self.discs_x, self.discs_y
        kx, ky = np.arange(fx, fx + nx), np.arange(fy, fy + ny)
        odd = int(((kx[None, :] + ky[:, None]) % 2).sum())
        return nx * ny - odd, odd

    def _axis(
        self, start: int, count: int, downsample: float, size: int, discs: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Along one axis: inside the tissue, grid index, offset from the disc centre, and
        whether that grid index holds a disc, for ``count`` level pixels from ``start``."""
        u = (start + np.arange(count)) * downsample + (downsample - 1) / 2
        tissue = (u >= self.margin) & (u < size - self.margin)
        k = np.floor(u / self.pitch).astype(np.int64)
        offset = u - (k * self.pitch + self.pitch // 2)
        has_disc = (k >= discs[0]) & (k < discs[0] + discs[1])
        return tissue, k, offset, has_disc

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """The region's pixels, drawn from what each row and column is (see :meth:`_axis`).

        Why a table: a pixel's colour depends only on its row's and its column's (tissue, grid
        parity, offset from the disc centre, disc or not), which take few distinct values (at
        most two disc pitches' worth). So the colours of those few rows by those few columns
        are drawn with the formulas, and the region is gathered from that small table: ~20x
        faster than the formulas over every pixel, which matters because the benchmark's
        reading workers draw every tile and a real slide reader only decodes it.
        """
        downsample = self.info.level_downsamples[level]
        lx, ly = level_position(x, downsample), level_position(y, downsample)
        row_kinds, rows = _distinct(
            self._axis(ly, height, downsample, self.info.height, self.discs_y)
        )
        col_kinds, cols = _distinct(
            self._axis(lx, width, downsample, self.info.width, self.discs_x)
        )
        ty, py, oy, dy = row_kinds
        tx, px, ox, dx = col_kinds
        table = np.empty((len(ty), len(tx), 3), np.uint8)
        table[:] = GLASS_RGB
        table[ty[:, None] & tx[None, :]] = TISSUE_RGB
        disc = (oy[:, None] ** 2 + ox[None, :] ** 2 <= DISC_RADIUS**2) & dy[:, None] & dx[None, :]
        odd = ((py[:, None] + px[None, :]) % 2).astype(bool)
        table[disc & ~odd] = DISC_RGB[0]
        table[disc & odd] = DISC_RGB[1]
        return np.ascontiguousarray(table[rows][:, cols])


def _distinct(
    axis: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """The distinct kinds of position along one axis and which kind each position is.

    Args:
        axis: per position: in the tissue, grid index, offset from the disc centre, has a disc
            (:meth:`SyntheticSlide._axis`); only the grid index's parity matters for colour.

    Returns:
        ``((tissue, parity, offset, has_disc) per distinct kind, kind of each position)``.
    """
    tissue, k, offset, has_disc = axis
    keys = np.stack([tissue, k % 2, offset, has_disc], axis=1).astype(np.float64)
    kinds, index = np.unique(keys, axis=0, return_inverse=True)
    kind = (
        kinds[:, 0].astype(bool),
        kinds[:, 1].astype(np.int64),
        kinds[:, 2],
        kinds[:, 3].astype(bool),
    )
    return kind, index.reshape(-1)


def open_synthetic_slide(path: str | os.PathLike) -> SyntheticSlide:
    """Open a synthetic slide by name (``.../synthetic-<W>x<H>.slide``, or
    ``synthetic-<W>x<H>-p<pitch>.slide``; no file is read). Module-level, so DataLoader
    workers can unpickle it and open their own.

    Raises:
        ValueError: the name is not of that form.
    """
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a synthetic slide name (synthetic-<W>x<H>[-p<P>].slide)")
    pitch = int(match[3]) if match[3] else DISC_PITCH
    return SyntheticSlide(int(match[1]), int(match[2]), pitch, path)


def find_discs(image: np.ndarray) -> list[Detection]:
    """The discs of a BGR tile as detections: dark connected blobs, class by hue.

    Why thresholding instead of fixed positions: the predictor gets pixels only, as a model
    does, and discs cut by the tile's edge come out cut, which the stitching must handle.
    """
    # "some channel below the threshold" = not "every channel at or above it"; OpenCV's range
    # test is ~20x faster than NumPy's min over the 3-wide last axis, and a stand-in for a model
    # on a GPU must leave the CPU to the reading and cell workers it is measuring.
    light = _DISC_THRESHOLD, _DISC_THRESHOLD, _DISC_THRESHOLD
    dark = cv2.bitwise_not(cv2.inRange(image, light, (255, 255, 255)))
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=4)
    detections = []
    for label in range(1, count):
        left, top, width, height = (int(v) for v in stats[label, :4])
        mask = labels[top : top + height, left : left + width] == label
        cx, cy = (int(v) for v in centroids[label])
        blue, _, red = (int(v) for v in image[cy, cx])
        detections.append(Detection(int(red > blue), 0.9, top, left, mask))
    return detections


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


def start_worker_server(workers: bool) -> set[int]:
    """Start the workers' fork server now (when there are workers) and return its processes.

    Why: the server is started by the first slide and serves the next ones; counted only in
    the slide that started it, it would make memory look larger for the first size than for
    the others. Started here, before any slide, it is counted in every slide (``keep``).
    """
    if not workers:
        return set()
    before = set(descendants(os.getpid()))
    context = worker_context([slide_loader.__name__, slide_cells.__name__])
    if context.get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()
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
        machine's CPU count and ``peak_rss_total_ratio`` (largest over smallest total peak).
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
    server = start_worker_server(num_workers > 0 or cell_workers > 0)
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
        "peak_rss_total_ratio": max(peaks) / min(peaks),
    }
    return report
