"""Reading slide tiles for the model, ahead of it, with bounded memory.

Reading and decoding a slide region (JPEG tiles in OpenSlide, or a TIFF pyramid) takes about as
long as the model takes to predict it, so tiles are read while the model works: in a background
thread (``num_workers=0``), or in ``num_workers`` processes of a torch ``DataLoader``. At most
``(num_workers * PREFETCH_BATCHES + 2) * batch_size`` tiles (or two batches with the thread) are
in memory at once, never the slide.

NOTE: OpenSlide handles cannot be pickled and must not be shared across a ``fork``, so readers
are never passed around: every process (and the thread) opens its own from the slide's path
with the caller's ``open_reader`` callable, which must be picklable for ``num_workers > 0`` (a
module-level function or class).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np
import torch.utils.data

from cellseg_d2.inference.slide_tiles import SlideTile
from cellseg_d2.utils.processes import worker_context

if TYPE_CHECKING:  # types only: the readers are opened through ``open_reader``
    from cellseg_d2.data.slide import SlideReader

__all__ = ["PREFETCH_BATCHES", "SlideTileDataset", "iter_tile_batches", "read_tile"]

#: Batches each DataLoader worker reads ahead.
PREFETCH_BATCHES = 2

_T = TypeVar("_T")
#: Marks the end of the items :func:`_ahead` takes.
_END: Any = object()

#: What opens a slide from its path (e.g. the reader class of ``cellseg_d2.data.slide``).
OpenReader = Callable[[str | os.PathLike], "SlideReader"]


def read_tile(reader: SlideReader, tile: SlideTile) -> np.ndarray:
    """One tile as the model wants it: read at the tile's level, resized to model scale, BGR.

    Why cv2: ``cv2.resize`` releases the GIL (the thread loader overlaps it with the model) and
    maps image edges onto image edges, the convention :attr:`SlideTile.level0_per_model_pixel`
    undoes. ``INTER_AREA`` when shrinking (no aliasing of fine texture), ``INTER_LINEAR`` when
    enlarging.

    Returns:
        ``model_height x model_width x 3`` contiguous uint8 BGR (the predictors' input order).
    """
    rgb = reader.read_region(tile.x, tile.y, tile.level, tile.read_width, tile.read_height)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"read_region returned shape {rgb.shape}; expected H x W x 3 RGB")
    rgb = rgb[:, :, :3]
    if rgb.dtype != np.uint8:
        raise ValueError(f"read_region returned {rgb.dtype}; expected uint8")
    size = (tile.model_width, tile.model_height)
    if (rgb.shape[1], rgb.shape[0]) != size:
        shrinking = tile.model_width * tile.model_height < rgb.shape[0] * rgb.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        rgb = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=interpolation)
    return np.ascontiguousarray(rgb[:, :, ::-1])


class SlideTileDataset(torch.utils.data.Dataset):
    """The tiles of one slide as a map-style dataset of ``(position, BGR image)``.

    The reader is opened on first use in whichever process reads, and kept for the next tiles;
    :meth:`close` closes it (DataLoader workers drop theirs when they exit).
    """

    def __init__(
        self, slide_path: str | os.PathLike, open_reader: OpenReader, tiles: Sequence[SlideTile]
    ) -> None:
        self.slide_path = slide_path
        self.open_reader = open_reader
        self.tiles = list(tiles)
        self._reader: SlideReader | None = None

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, position: int) -> tuple[int, np.ndarray]:
        if self._reader is None:
            self._reader = self.open_reader(self.slide_path)
        return position, read_tile(self._reader, self.tiles[position])

    def __getstate__(self) -> dict[str, Any]:
        # A worker must open its own handle: never ship (or fork-share) an open one.
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def close(self) -> None:
        """Close this process's reader, if one was opened."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _as_lists(items: list[tuple[int, np.ndarray]]) -> tuple[list[int], list[np.ndarray]]:
    """Collate without stacking: edge tiles differ in size, and the predictor takes a list."""
    return [position for position, _ in items], [image for _, image in items]


def iter_tile_batches(
    slide_path: str | os.PathLike,
    open_reader: OpenReader,
    tiles: Sequence[SlideTile],
    batch_size: int,
    num_workers: int = 0,
) -> Iterator[tuple[list[SlideTile], list[np.ndarray]]]:
    """Yield ``(tiles, BGR images)`` batches in plan order, reading ahead of the caller.

    Args:
        slide_path: the slide, opened by ``open_reader`` in each reading process.
        open_reader: path -> reader; picklable when ``num_workers > 0``.
        tiles: the tiles to read, in the order wanted.
        batch_size: tiles per batch (the model's batch).
        num_workers: 0 reads in one background thread of this process; more start that many
            DataLoader worker processes.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size ({batch_size}) >= 1 and num_workers ({num_workers}) >= 0")
    tiles = list(tiles)
    if not tiles:
        return
    dataset = SlideTileDataset(slide_path, open_reader, tiles)
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_as_lists,
            prefetch_factor=PREFETCH_BATCHES,
            # not fork: the workers call cv2.resize, and OpenCV's pool does not survive fork
            multiprocessing_context=worker_context([__name__]),
        )
        batches: Iterator[tuple[list[int], list[np.ndarray]]] = iter(loader)
    else:
        batches = (
            _as_lists([dataset[p] for p in range(start, min(start + batch_size, len(tiles)))])
            for start in range(0, len(tiles), batch_size)
        )
    try:
        for positions, images in _ahead(batches):
            yield [tiles[p] for p in positions], images
    finally:
        del batches  # a DataLoader's workers stop with their iterator
        dataset.close()


def _ahead(items: Iterator[_T]) -> Iterator[_T]:
    """``items``, the next one always being taken in a background thread while the caller
    works on the current one.

    Why: without workers, the thread reads the tiles. With DataLoader workers it takes each
    batch out of their pipe: 12 MB for four 1024² tiles, 20-25 ms of receiving and unpickling
    that otherwise sat between two model calls; in the thread it overlaps the model's call
    (a model on a GPU waits with the GIL released). One item more is held while it waits.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slide-read") as pool:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item
