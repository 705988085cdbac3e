"""Measure and outline a slide's tiles off the model's thread, in worker processes, in order.

Why: turning a tile's detections into stored cells (:func:`~cellseg_d2.inference.slide_stitch
.tile_cells`: ownership, outline polygons, measurements) costs 0.15-0.25 ms a cell even done a
tile at a time, so a tile of a few hundred nuclei takes about as long as a GPU needs to predict
it. Done in the loop it makes the GPU wait; done in ``workers`` processes it overlaps the
model's next batches, and several workers share the tiles. Results come back in submission
order, so chunks are written exactly as by one process (same cells, same ids, same resume
points).

Memory stays bounded: at most ``max_pending`` tiles (their detections and pixels) wait in the
pool; submitting more blocks until the oldest is done. ``workers=0`` does the work in the
calling thread (CPU prediction, where the model already uses every core, and tests).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_stitch import (
    CellPixels,
    SlideCell,
    drop_seam_duplicates,
    owned_detections,
    tile_cells,
)
from cellseg_d2.inference.slide_tiles import SlideTile, TissueFilter
from cellseg_d2.utils.closing import Closing
from cellseg_d2.utils.processes import worker_context

__all__ = [
    "ChunkWriter",
    "TileCellsPool",
    "auto_cell_workers",
    "predict_chunk_list",
    "predict_chunks",
    "slide_chunks",
]

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


def _single_threaded() -> None:
    """Worker start: OpenCV without its thread pool (one worker is one core's worth of work),
    and what the worker has imported frozen out of the garbage collector.

    Why freeze: each tile's outlines are tens of thousands of small lists, which set off the
    collector's full passes, and a full pass walks every object of torch and the other imported
    libraries (which live as long as the worker anyway); that made a tile's time swing by 2x.
    """
    cv2.setNumThreads(1)
    gc.freeze()


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
        # forkserver, not fork: OpenCV's thread pool does not survive fork (a forked worker
        # hung in its first cv2 call); the server imports this module once, so workers start
        # with it (and torch) already imported. The workers use NumPy, scikit-image and OpenCV
        # only, never torch or CUDA, and keep OpenCV to one thread. No workers: no server touched.
        self._executor = (
            ProcessPoolExecutor(
                workers, mp_context=worker_context([__name__]), initializer=_single_threaded
            )
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
        # only what the worker needs: the owned detections and the pixels under them
        owned = [det for det, _ in owned_detections(tile, detections)]
        future = self._executor.submit(tile_cells, tile, owned, CellPixels.of(image, owned))
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


def slide_chunks(tiles: Sequence[SlideTile], chunk_tiles: int) -> list[list[SlideTile]]:
    """The plan's tiles in chunks of ``chunk_tiles`` (the last may be shorter), in order.

    Why one definition: chunk ``c`` must mean the same tiles to every process of a slide
    (seam duplicates are dropped within a chunk, so the chunks decide the cells).
    """
    return [list(tiles[i : i + chunk_tiles]) for i in range(0, len(tiles), chunk_tiles)]


#: ``write(chunk number, its tiles' indices, its kept cells)``: where a finished chunk goes.
ChunkWriter = Callable[[int, list[int], list[SlideCell]], None]
#: ``tiles -> (tiles, BGR images)`` batches in the given order.
TileBatches = Callable[[list[SlideTile]], Iterator[tuple[list[SlideTile], list[np.ndarray]]]]
#: ``predict(images) -> detections per image``.
TilePredictor = Callable[[Sequence[np.ndarray]], list[list[Detection]]]


def predict_chunks(
    store: CellStore,
    tiles: Sequence[SlideTile],
    chunk_tiles: int,
    batches: TileBatches,
    predictor: TilePredictor,
    progress_label: str | None,
    cell_workers: int = 0,
    keep: TissueFilter | None = None,
    write: ChunkWriter | None = None,
) -> tuple[int, int]:
    """Predict the tiles of the chunks the store lacks, committing chunk by chunk.

    The model runs here; each tile's cells are made by a :class:`TileCellsPool` of
    ``cell_workers`` processes while the model goes on, and a chunk is stitched
    (:func:`~cellseg_d2.inference.slide_stitch.drop_seam_duplicates`) and written as soon as
    its last tile's cells are back, in chunk order (:func:`predict_chunk_list`), by ``write``
    (default: the store's ``write_chunk``; a caller's may also stream the chunk elsewhere).

    Returns:
        ``(tiles resumed from the store, tiles predicted now)``.

    Raises:
        CellDataError: the store holds more chunks than the plan.
    """
    chunks = slide_chunks(tiles, chunk_tiles)
    first = store.finished_chunks()
    if first > len(chunks):
        raise CellDataError(f"{store.path}: more chunks stored than planned; run without resume")
    resumed = sum(len(chunk) for chunk in chunks[:first])
    bar = tqdm(
        total=len(tiles),
        initial=resumed,
        unit="tile",
        desc=progress_label,
        disable=progress_label is None,
    )
    with bar:
        todo = list(enumerate(chunks))[first:]
        seen = predict_chunk_list(
            todo, write or store.write_chunk, batches, predictor, bar, cell_workers, keep
        )
    return resumed, seen


def predict_chunk_list(
    chunks: Sequence[tuple[int, list[SlideTile]]],
    write: ChunkWriter,
    batches: TileBatches,
    predictor: TilePredictor,
    bar: tqdm,
    cell_workers: int = 0,
    keep: TissueFilter | None = None,
) -> int:
    """Predict the given chunks (any subset of a slide's, in order) and ``write`` each one.

    Why apart from :func:`predict_chunks`: a rank of a multi-process run predicts every
    ``n``-th chunk and writes each to a shard file instead of the store
    (:mod:`~cellseg_d2.inference.slide_ranks`); the chunk's cells are the same either way,
    because a chunk is stitched from its own tiles only. On an error, every chunk whose tiles
    were all predicted is still written before the error goes on.

    The model runs in this thread; each batch's tiles are handed to the cell workers, and the
    finished chunks stitched and written, in a second thread while the model predicts the
    next batch (one batch in hand-over at a time, in order; ``write`` is called from there).
    Why: on a GPU the model waits with the GIL released, and the store's transactions and the
    hand-over took 10 ms a tile that otherwise sat between two model calls.

    Args:
        chunks: ``(chunk number, its tiles)`` in the order to predict.
        write: receives each finished chunk, in that order.
        batches: reads the tiles in batches, in the given order.
        predictor: the model.
        bar: progress, advanced by the tiles predicted.
        cell_workers: :class:`TileCellsPool` processes (0: in the hand-over thread).
        keep: the tissue filter (:class:`~cellseg_d2.inference.slide_tiles.TissueFilter`):
            cells whose level-0 centroid it refuses are dropped; None keeps all.

    Returns:
        The tiles predicted.
    """
    pending = [tile for _, members in chunks for tile in members]
    number_of = {tile.index: i for i, (_, members) in enumerate(chunks) for tile in members}
    cells: list[SlideCell] = []
    seen = 0

    def collect(finished: Iterator[tuple[SlideTile, list[SlideCell]]]) -> None:
        nonlocal cells, seen
        for tile, tile_kept in finished:
            if keep is not None and tile_kept:
                xs = np.fromiter((c.centroid_x for c in tile_kept), np.float64, len(tile_kept))
                ys = np.fromiter((c.centroid_y for c in tile_kept), np.float64, len(tile_kept))
                tile_kept = list(itertools.compress(tile_kept, keep.keeps(xs, ys)))
            cells.extend(tile_kept)
            seen += 1
            position = number_of[tile.index]
            if seen == len(pending) or number_of[pending[seen].index] != position:
                chunk, members = chunks[position]
                kept = drop_seam_duplicates(cells, members)
                write(chunk, [t.index for t in members], kept)
                cells = []

    def hand_over(
        batch_tiles: list[SlideTile], images: list[np.ndarray], outputs: list[list[Detection]]
    ) -> None:
        for tile, image, detections in zip(batch_tiles, images, outputs):
            pool.submit(tile, detections, image)
        collect(pool.ready())
        bar.update(len(batch_tiles))

    pool = TileCellsPool(cell_workers)
    handed: Future | None = None
    with (
        pool,
        contextlib.closing(batches(pending)) as loader,
        ThreadPoolExecutor(1, thread_name_prefix="slide-cells") as after,
    ):
        try:
            for batch_tiles, images in loader:
                outputs = predictor(images)
                if len(outputs) != len(images):
                    raise ValueError(
                        f"predictor gave {len(outputs)} results for {len(images)} tiles"
                    )
                if handed is not None:
                    handed.result()  # one batch in hand-over at a time; re-raises its error
                # the tiles go to the cell workers, and finished chunks to the store, in a
                # thread while the model predicts the next batch
                handed = after.submit(hand_over, batch_tiles, images, outputs)
            if handed is not None:
                handed.result()
        except BaseException:
            # keep every chunk whose tiles were all predicted, as the loop without workers does
            with contextlib.suppress(BaseException):
                if handed is not None:
                    handed.result()  # let the hand-over finish (its error, if any, is raised)
            with contextlib.suppress(Exception):
                collect(pool.drain())
            raise
        collect(pool.drain())
    return seen
