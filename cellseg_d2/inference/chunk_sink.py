"""Stitch and write a slide's finished chunks in a background thread, beside the model's loop.

Why: once a tile's cells are made (in cell workers, :mod:`~cellseg_d2.inference.slide_cells`),
what is left for them is the tissue filter, the seam stitching of their chunk and the chunk's
SQLite transaction (or shard file). Done in the model's loop, that time (~5-10 ms a tile) adds
to every tile's, so the loop cannot keep pace with a model of 50 ms a tile even when every other
step has cores to spare. In a thread it overlaps the model's call: a model on a GPU (or the
benchmark's stand-in) waits without holding the GIL, and SQLite writes without it.

Order and results are unchanged: the sink takes tiles in the order they were submitted, cuts
chunks at the same tiles and writes each as soon as its last tile is in, exactly as the loop
did (same cells, same ids, same resume points). Memory stays bounded: at most ``max_tiles``
tiles wait for the sink; the loop blocks beyond that. An error in the sink is raised in the
loop at its next hand-over (or at :meth:`ChunkSink.finish`), and a loop that fails hands over
what it has and finishes the sink, so every chunk whose tiles were all predicted is still
written before the error goes on.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np

from cellseg_d2.inference.slide_stitch import SlideCell, drop_seam_duplicates
from cellseg_d2.inference.slide_tiles import SlideTile, TissueFilter
from cellseg_d2.utils.closing import Closing

__all__ = ["ChunkSink", "ChunkWriter"]

#: ``write(chunk number, its tiles' indices, its kept cells)``: where a finished chunk goes.
ChunkWriter = Callable[[int, list[int], list[SlideCell]], None]
#: How long a blocked hand-over waits before it looks again whether the sink failed (s).
_POLL_S = 0.1
#: What tells the sink thread that no more tiles come.
_END = None


class ChunkSink(Closing):
    """Keeps a stream of tiles' cells, cuts it into the plan's chunks and writes each chunk.

    Use :meth:`put` for each tile's cells in the order of ``chunks``, then :meth:`finish`. As a
    context manager, leaving it without :meth:`finish` stops the thread after the tiles it
    already has, writing their finished chunks (the loop's error path).
    """

    def __init__(
        self,
        chunks: Sequence[tuple[int, list[SlideTile]]],
        write: ChunkWriter,
        keep: TissueFilter | None = None,
        max_tiles: int = 8,
    ) -> None:
        """Start the sink.

        Args:
            chunks: ``(chunk number, its tiles)`` in the order the tiles will come.
            write: receives each finished chunk, in that order, in the sink's thread.
            keep: the tissue filter: cells whose level-0 centroid it refuses are dropped.
            max_tiles: tiles handed over but not yet taken before :meth:`put` blocks.
        """
        self.seen = 0
        self._chunks = list(chunks)
        self._tiles = [tile for _, members in self._chunks for tile in members]
        self._chunk_of = {
            tile.index: position
            for position, (_, members) in enumerate(self._chunks)
            for tile in members
        }
        self._write = write
        self._keep = keep
        self._cells: list[SlideCell] = []
        self._error: BaseException | None = None  # raised once, in the loop's thread
        self._failed = False  # stays set: a failed sink takes no more work
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_tiles))
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="cellseg-chunk-sink", daemon=True
        )  # daemon: never keeps a stopped process alive
        self._thread.start()

    def put(self, tile: SlideTile, cells: list[SlideCell]) -> None:
        """Hand over one tile's cells (waits while ``max_tiles`` tiles are waiting).

        Raises:
            BaseException: what failed in the sink (writing a chunk); it is raised once.
        """
        while True:
            self._raise_failure()
            try:
                self._queue.put((tile, cells), timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> int:
        """Wait until every handed-over tile is kept and its chunk written.

        Returns:
            The tiles taken.

        Raises:
            BaseException: what failed in the sink.
        """
        if self._thread is not None:
            while self._thread.is_alive():  # it takes tiles until the end marker
                try:
                    self._queue.put(_END, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            self._thread.join()
            self._thread = None
        self._raise_failure()
        return self.seen

    def close(self) -> None:
        """Stop the thread after the tiles it already has (without raising its failure)."""
        if self._thread is not None:
            self.finish_quietly()

    def finish_quietly(self) -> None:
        """:meth:`finish`, swallowing the sink's own failure (the caller has an error to raise)."""
        try:
            self.finish()
        except Exception:  # noqa: BLE001 - the loop's error is the one to report
            pass

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._failed:
                continue  # take what comes without work, so put() never blocks
            try:
                self._take(*item)
            except BaseException as error:  # noqa: BLE001 - handed to the loop's thread
                self._failed = True
                self._error = error

    def _take(self, tile: SlideTile, cells: list[SlideCell]) -> None:
        """Filter one tile's cells, and write its chunk if it was the chunk's last tile."""
        if self._keep is not None and cells:
            xs = np.fromiter((c.centroid_x for c in cells), np.float64, len(cells))
            ys = np.fromiter((c.centroid_y for c in cells), np.float64, len(cells))
            cells = list(itertools.compress(cells, self._keep.keeps(xs, ys)))
        self._cells.extend(cells)
        self.seen += 1
        position = self._chunk_of[tile.index]
        last = self.seen == len(self._tiles)
        if last or self._chunk_of[self._tiles[self.seen].index] != position:
            chunk, members = self._chunks[position]
            kept = drop_seam_duplicates(self._cells, members)
            self._cells = []
            self._write(chunk, [t.index for t in members], kept)
