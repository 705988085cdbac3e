"""Tests for cellseg_d2.inference.chunk_sink: chunks cut, filtered, stitched and written in a
thread exactly as the loop did, its errors raised in the loop, its memory bounded."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cellseg_d2.inference.chunk_sink import ChunkSink
from cellseg_d2.inference.slide_stitch import SlideCell
from cellseg_d2.inference.slide_tiles import SlideTile, TissueFilter


def _tile(index: int, size: int = 32) -> SlideTile:
    x = index * size
    return SlideTile(index, 0, index, x, 0, size, size, 0, 1.0, size, size, size, size,
                     (x, 0, x + size, size))  # fmt: skip


def _cell(tile: int, x: float, score: float = 0.9) -> SlideCell:
    box = (x - 2.0, 4.0, x + 2.0, 8.0)
    return SlideCell(tile, 0, score, box, 16.0, x, 6.0, 12.0, 0.1, 1.0, (1.0, 2.0, 3.0), "{}")


class Recorder:
    """A chunk writer that records what it got and in which thread."""

    def __init__(self, fail_at: int | None = None, gate: threading.Event | None = None) -> None:
        self.chunks: list[tuple[int, list[int], list[float]]] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at
        self.gate = gate

    def __call__(self, chunk: int, tiles: list[int], cells: list[SlideCell]) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if chunk == self.fail_at:
            raise OSError(f"disk full at chunk {chunk}")
        self.threads.add(threading.current_thread().name)
        self.chunks.append((chunk, tiles, [c.centroid_x for c in cells]))


def _plan(sizes: list[int], first_chunk: int = 0) -> list[tuple[int, list[SlideTile]]]:
    chunks, index = [], 0
    for number, size in enumerate(sizes, start=first_chunk):
        chunks.append((number, [_tile(i) for i in range(index, index + size)]))
        index += size
    return chunks


def test_chunks_are_cut_filtered_and_written_in_order_off_the_loops_thread() -> None:
    chunks = _plan([2, 3, 1], first_chunk=4)  # a resumed slide starts at chunk 4
    mask = np.ones((1, 6), bool)
    mask[0, 4:] = False  # tissue at level-0 x < 128; cells one mask pixel beyond it are kept
    keep = TissueFilter(mask, 32.0)
    write = Recorder()
    with ChunkSink(chunks, write, keep) as sink:
        for _, members in chunks:
            for tile in members:
                x = tile.x + 16.0
                sink.put(tile, [_cell(tile.index, x), _cell(tile.index, x + 8.0)])
        assert sink.finish() == 6
    assert write.chunks == [
        (4, [0, 1], [16.0, 24.0, 48.0, 56.0]),
        (5, [2, 3, 4], [80.0, 88.0, 112.0, 120.0, 144.0, 152.0]),
        (6, [5], []),  # its cells lie at x 176-184, two mask pixels off the tissue
    ]
    assert write.threads == {"cellseg-chunk-sink"}


def test_seam_duplicates_are_dropped_within_a_chunk() -> None:
    # two tiles whose windows overlap in x 24-40, each keeping the same cell at x 31
    left = SlideTile(0, 0, 0, 0, 0, 40, 32, 0, 1.0, 40, 32, 40, 32, (0, 0, 32, 32))
    right = SlideTile(1, 0, 1, 24, 0, 40, 32, 0, 1.0, 40, 32, 40, 32, (32, 0, 64, 32))
    write = Recorder()
    sink = ChunkSink([(0, [left, right])], write)
    sink.put(left, [_cell(0, 31.0, score=0.8), _cell(0, 10.0)])
    sink.put(right, [_cell(1, 31.0, score=0.9)])
    sink.finish()
    assert write.chunks == [(0, [0, 1], [10.0, 31.0])]  # the better-scored copy stays


def test_a_write_error_reaches_the_loop_once_and_later_chunks_are_not_written() -> None:
    chunks = _plan([1, 1, 1, 1])
    write = Recorder(fail_at=1)
    sink = ChunkSink(chunks, write, max_tiles=1)
    with pytest.raises(OSError, match="disk full at chunk 1"):
        for _, members in chunks:
            sink.put(members[0], [_cell(members[0].index, 5.0 + 32 * members[0].index)])
        sink.finish()
    assert [c[0] for c in write.chunks] == [0]
    assert sink.finish() == 2  # raised once: finishing again is quiet; 2 tiles were taken


def test_closing_without_finish_writes_only_whole_chunks() -> None:
    chunks = _plan([2, 2])
    write = Recorder()
    with ChunkSink(chunks, write) as sink:
        for tile in [chunks[0][1][0], chunks[0][1][1], chunks[1][1][0]]:
            sink.put(tile, [_cell(tile.index, 5.0 + 32 * tile.index)])
    assert [c[0] for c in write.chunks] == [0]  # chunk 1 lacked a tile: not written


def test_handing_over_blocks_while_max_tiles_wait() -> None:
    chunks = _plan([1, 1, 1, 1])
    gate = threading.Event()
    write = Recorder(gate=gate)
    sink = ChunkSink(chunks, write, max_tiles=1)
    tiles = [members[0] for _, members in chunks]
    sink.put(tiles[0], [])  # taken: its write waits at the gate
    sink.put(tiles[1], [])  # queued (or taken once the first is in write): the queue fills
    third = threading.Thread(target=lambda: (sink.put(tiles[2], []), sink.put(tiles[3], [])))
    third.start()
    third.join(0.5)
    assert third.is_alive()  # blocked: the writer holds one tile and the queue is full
    gate.set()
    third.join(10)
    assert not third.is_alive() and sink.finish() == 4
    assert [c[0] for c in write.chunks] == [0, 1, 2, 3]
