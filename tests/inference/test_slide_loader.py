"""Reading slide tiles: level, resize, BGR, order, prefetch in a thread or worker processes."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.inference.slide_loader import (
    SlideTileDataset,
    _ahead,
    iter_tile_batches,
    read_tile,
)
from cellseg_d2.inference.slide_tiles import plan_slide_tiles
from tests.inference.slide_fakes import FakeSlideReader, make_canvas, open_npz_slide, save_slide


@pytest.fixture(scope="module")
def canvas() -> np.ndarray:
    return make_canvas(width=160, height=128, tissue_width=120)[0]


def test_read_tile_reads_its_level_and_resizes_to_bgr(canvas: np.ndarray) -> None:
    reader = FakeSlideReader("s", canvas)
    tile = plan_slide_tiles(reader.info, 1.0, tile_size=64, overlap=16)[0]
    image = read_tile(reader, tile)
    assert image.shape == (64, 64, 3) and image.flags.c_contiguous
    np.testing.assert_array_equal(image, canvas[:64, :64, ::-1])

    enlarged = plan_slide_tiles(reader.info, 2.0, tile_size=64, overlap=16)[0]
    assert read_tile(reader, enlarged).shape == (64, 64, 3)
    assert reader.reads[-1] == (0, 0, 0, 32, 32)

    halved = plan_slide_tiles(reader.info, 0.5, tile_size=32, overlap=8)[0]
    image = read_tile(reader, halved)
    assert reader.reads[-1] == (0, 0, 1, 32, 32)  # level 1, no resize needed
    np.testing.assert_array_equal(image, reader.levels[1][:32, :32, ::-1])


def test_thread_loader_keeps_order_and_closes_its_reader(canvas: np.ndarray) -> None:
    opened: list[FakeSlideReader] = []

    def open_reader(path: str) -> FakeSlideReader:
        opened.append(FakeSlideReader(path, canvas))
        return opened[-1]

    tiles = plan_slide_tiles(FakeSlideReader("s", canvas).info, 1.0, 64, 16)
    batches = list(iter_tile_batches("s", open_reader, tiles, batch_size=4, num_workers=0))
    assert [t for batch, _ in batches for t in batch] == tiles
    assert [len(batch) for batch, _ in batches] == [4] * (len(tiles) // 4) + (
        [len(tiles) % 4] if len(tiles) % 4 else []
    )
    assert len(opened) == 1 and opened[0].closed
    assert len(opened[0].reads) == len(tiles)
    for batch, images in batches:
        for tile, image in zip(batch, images):
            np.testing.assert_array_equal(
                image, canvas[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width, ::-1]
            )


def test_worker_processes_open_their_own_reader(canvas: np.ndarray, tmp_path: Path) -> None:
    path = save_slide(tmp_path / "slide.npz", canvas)
    tiles = plan_slide_tiles(open_npz_slide(path).info, 1.0, 64, 16)
    dataset = SlideTileDataset(path, open_npz_slide, tiles)
    dataset[0]  # opened here ...
    assert pickle.loads(pickle.dumps(dataset))._reader is None  # ... but never shipped
    got = list(iter_tile_batches(path, open_npz_slide, tiles, batch_size=3, num_workers=1))
    assert [t for batch, _ in got for t in batch] == tiles
    tile, image = got[-1][0][-1], got[-1][1][-1]
    np.testing.assert_array_equal(
        image, canvas[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width, ::-1]
    )


def test_read_errors_reach_the_caller(canvas: np.ndarray) -> None:
    class Broken(FakeSlideReader):
        def read_region(self, *args: int) -> np.ndarray:
            raise OSError("corrupt JPEG tile")

    tiles = plan_slide_tiles(FakeSlideReader("s", canvas).info, 1.0, 64, 16)
    with pytest.raises(OSError, match="corrupt"):
        list(iter_tile_batches("s", lambda p: Broken(p, canvas), tiles, batch_size=2))


def test_the_next_item_is_taken_while_the_caller_works_on_the_current_one() -> None:
    taken: list[int] = []

    def items():
        for i in range(3):
            taken.append(i)
            yield i
        raise OSError("tile 3 unreadable")

    ahead = _ahead(items())
    assert next(ahead) == 0
    deadline = time.monotonic() + 5
    while len(taken) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the caller "works"; the thread takes item 1 meanwhile
    assert taken == [0, 1]
    assert [next(ahead), next(ahead)] == [1, 2]
    with pytest.raises(OSError, match="tile 3"):
        next(ahead)
    stopped = _ahead(iter(range(10)))
    assert next(stopped) == 0
    stopped.close()  # leaving early waits for the one item in flight, then ends
