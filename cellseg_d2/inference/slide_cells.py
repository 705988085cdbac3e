"""Measure and outline a slide's tiles off the model's thread, in worker processes, in order.

Why: turning a tile's detections into stored cells (:func:`~cellseg_d2.inference.slide_stitch
.tile_cells`: ownership, outline polygons, measurements) costs about half a millisecond a cell
in Python, so a tile of a few hundred nuclei takes longer than a GPU needs to predict it. Done
in the loop it makes the GPU wait; done in ``workers`` processes it overlaps the model's next
batches, and several workers share the tiles. Results come back in submission order, so chunks
are written exactly as by one process (same cells, same ids, same resume points).

Memory stays bounded: at most ``max_pending`` tiles (their detections and pixels) wait in the
pool; submitting more blocks until the oldest is done. ``workers=0`` does the work in the
calling thread (CPU prediction, where the model already uses every core, and tests).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_stitch import SlideCell, drop_seam_duplicates, tile_cells
from cellseg_d2.inference.slide_tiles import SlideTile
from cellseg_d2.utils.closing import Closing

__all__ = ["TileCellsPool", "auto_cell_workers", "predict_chunks"]

#: Tiles waiting in the pool per worker before :meth:`TileCellsPool.submit` blocks.
PENDING_PER_WORKER = 4


def auto_cell_workers(device: str, reading_workers: int, cpu_count: int | None = None) -> int:
    """How many cell workers a slide run gets when the config says ``-1`` (automatic).

    On a GPU the model leaves the CPU cores idle: use what the reading workers and the main
    process leave, at most 4 (beyond that the store's single writer limits). On CPU the model
    already uses every core, so the cells are made in the loop (0).
    """
    if not device.startswith("cuda"):
        return 0
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(0, min(4, cores - reading_workers - 1))


class TileCellsPool(Closing):
    """``tile_cells`` for a stream of tiles, in ``workers`` processes, results in order.

    Use as a context manager: leaving it stops the workers (pending work is dropped, as a
    stopped run drops its unfinished chunk).
    """

    def __init__(self, workers: int, max_pending: int | None = None) -> None:
        """Start ``workers`` processes (none for 0).

        Args:
            workers: worker processes; 0 computes in :meth:`submit` itself.
            max_pending: tiles in flight before :meth:`submit` waits (default
                :data:`PENDING_PER_WORKER` per worker).

        Raises:
            ValueError: a negative ``workers``.
        """
        if workers < 0:
            raise ValueError(f"cell workers must be 0 or more, got {workers}")
        self.workers = workers
        self.max_pending = max_pending or PENDING_PER_WORKER * max(1, workers)
        # spawn: the parent holds torch's thread pools and maybe CUDA, which fork must not copy
        self._executor = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers
            else None
        )
        self._pending: deque[tuple[SlideTile, Future | list[SlideCell]]] = deque()

    def submit(self, tile: SlideTile, detections: Sequence[Detection], image: np.ndarray) -> None:
        """Queue one tile (waits while ``max_pending`` tiles are in flight)."""
        if self._executor is None:
            self._pending.append((tile, tile_cells(tile, detections, image)))
            return
        if len(self._pending) >= self.max_pending:
            # wait until at most max_pending - 1 tiles are unfinished; ready() hands them out
            waiting = self._pending[len(self._pending) - self.max_pending][1]
            if isinstance(waiting, Future):
                waiting.exception()
        future = self._executor.submit(tile_cells, tile, list(detections), image)
        self._pending.append((tile, future))

    def ready(self) -> Iterator[tuple[SlideTile, list[SlideCell]]]:
        """The finished tiles at the head of the queue, in submission order (never waits)."""
        while self._pending:
            tile, result = self._pending[0]
            if isinstance(result, Future):
                if not result.done():
                    return
                result = result.result()  # re-raises a worker's error here
            self._pending.popleft()
            yield tile, result

    def drain(self) -> Iterator[tuple[SlideTile, list[SlideCell]]]:
        """Every remaining tile, in submission order, waiting as needed."""
        while self._pending:
            tile, result = self._pending.popleft()
            yield tile, result.result() if isinstance(result, Future) else result

    def close(self) -> None:
        """Stop the workers, dropping what is still pending."""
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def predict_chunks(
    store: CellStore,
    tiles: Sequence[SlideTile],
    chunk_tiles: int,
    batches: Callable[[list[SlideTile]], Iterator[tuple[list[SlideTile], list[np.ndarray]]]],
    predictor: Callable[[Sequence[np.ndarray]], list[list[Detection]]],
    progress_label: str | None,
    cell_workers: int = 0,
) -> tuple[int, int]:
    """Predict the tiles of the chunks the store lacks, committing chunk by chunk.

    The model runs here; each tile's cells are made by a :class:`TileCellsPool` of
    ``cell_workers`` processes while the model goes on, and a chunk is stitched
    (:func:`~cellseg_d2.inference.slide_stitch.drop_seam_duplicates`) and written as soon as
    its last tile's cells are back, in chunk order.

    Returns:
        ``(tiles resumed from the store, tiles predicted now)``.

    Raises:
        CellDataError: the store holds more chunks than the plan.
    """
    chunks = [list(tiles[i : i + chunk_tiles]) for i in range(0, len(tiles), chunk_tiles)]
    first = store.finished_chunks()
    if first > len(chunks):
        raise CellDataError(f"{store.path}: more chunks stored than planned; run without resume")
    resumed = sum(len(chunk) for chunk in chunks[:first])
    pending = [tile for chunk in chunks[first:] for tile in chunk]
    chunk_of = {tile.index: first + i // chunk_tiles for i, tile in enumerate(pending)}
    cells: list[SlideCell] = []
    seen = 0

    def collect(finished: Iterator[tuple[SlideTile, list[SlideCell]]]) -> None:
        nonlocal cells, seen
        for tile, tile_kept in finished:
            cells.extend(tile_kept)
            seen += 1
            chunk = chunk_of[tile.index]
            if seen == len(pending) or chunk_of[pending[seen].index] != chunk:
                members = chunks[chunk]
                kept = drop_seam_duplicates(cells, members)
                store.write_chunk(chunk, [t.index for t in members], kept)
                cells = []

    bar = tqdm(
        total=len(tiles),
        initial=resumed,
        unit="tile",
        desc=progress_label,
        disable=progress_label is None,
    )
    pool = TileCellsPool(cell_workers)
    with bar, pool, contextlib.closing(batches(pending)) as loader:
        try:
            for batch_tiles, images in loader:
                outputs = predictor(images)
                if len(outputs) != len(images):
                    raise ValueError(
                        f"predictor gave {len(outputs)} results for {len(images)} tiles"
                    )
                for tile, image, detections in zip(batch_tiles, images, outputs):
                    pool.submit(tile, detections, image)
                collect(pool.ready())
                bar.update(len(batch_tiles))
        except BaseException:
            # keep every chunk whose tiles were all predicted, as the loop without workers does
            with contextlib.suppress(Exception):
                collect(pool.drain())
            raise
        collect(pool.drain())
    return resumed, seen
