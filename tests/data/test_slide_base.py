"""What every slide reader shares (:mod:`cellseg_d2.data.slide_base`): :class:`SlideInfo`, the
:class:`SlideReader` base (argument checks, level choice, piecewise thumbnails) and the pixel
helpers, checked exactly on a reader backed by numpy arrays defined here."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cellseg_d2.data import slide_base
from cellseg_d2.data.slide_base import (
    LEVEL_TOLERANCE,
    SlideInfo,
    SlideReader,
    level_position,
    paste_window,
    rgba_on_white,
)
from tests.data.slide_helpers import pattern


def _info(
    level_dimensions: tuple[tuple[int, int], ...], level_downsamples: tuple[float, ...]
) -> SlideInfo:
    width, height = level_dimensions[0]
    return SlideInfo(
        path=Path("arrays.tif"),
        width=width,
        height=height,
        level_dimensions=level_dimensions,
        level_downsamples=level_downsamples,
        pixel_size_um=None,
        offset=(0, 0),
        reader="test",
    )


class ArrayReader(SlideReader):
    """A slide whose levels are RGB arrays: reads are slices padded with white, recorded."""

    def __init__(self, levels: list[np.ndarray], downsamples: tuple[float, ...] = ()) -> None:
        self.levels = levels
        self.reads: list[tuple[int, int, int, int, int]] = []
        self.closed = 0
        dims = tuple((a.shape[1], a.shape[0]) for a in levels)
        super().__init__(_info(dims, downsamples or tuple(dims[0][0] / w for w, _ in dims)))

    def close(self) -> None:
        self.closed += 1

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        self.reads.append((x, y, level, width, height))
        downsample = self.info.level_downsamples[level]
        origin = (level_position(x, downsample), level_position(y, downsample))
        out = np.full((height, width, 3), 255, np.uint8)
        paste_window(out, origin, self.levels[level], (0, 0))
        return out


def _levels_only(downsamples: tuple[float, ...]) -> SlideReader:
    """A reader that is never read: only its level downsamples matter."""
    dims = tuple((max(1, int(1000 / d)), max(1, int(1000 / d))) for d in downsamples)
    return SlideReader(_info(dims, downsamples))


# --- SlideInfo and the reader's contract --------------------------------------------------------


def test_slide_info_level_count_defaults_and_frozen() -> None:
    info = _info(((40, 30), (20, 15), (10, 8)), (1.0, 2.0, 4.0))
    assert info.level_count == 3
    assert (info.pixel_size_y_um, info.objective_power, info.vendor) == (None, None, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.width = 1  # type: ignore[misc]


def test_reader_is_a_context_manager_that_closes() -> None:
    reader = ArrayReader([pattern(4, 4)])
    with reader as entered:
        assert entered is reader and reader.closed == 0
    assert reader.closed == 1
    with pytest.raises(KeyError):  # the error passes through, the file is still closed
        with reader:
            raise KeyError("boom")
    assert reader.closed == 2


def test_read_region_checks_arguments_and_passes_ints() -> None:
    reader = ArrayReader([pattern(8, 10), pattern(4, 5)])
    for level in (-1, 2):
        with pytest.raises(ValueError, match=rf"level {level} does not exist \(the slide has 2\)"):
            reader.read_region(0, 0, level, 1, 1)
    for width, height in ((0, 1), (1, 0), (-3, 2)):
        with pytest.raises(ValueError, match=rf"region size {width}x{height}: both sides"):
            reader.read_region(0, 0, 0, width, height)
    assert reader.reads == []  # refused before any read
    region = reader.read_region(np.int64(3), np.int32(2), np.int64(1), np.int64(2), 1)
    assert reader.reads == [(3, 2, 1, 2, 1)]
    assert all(type(value) is int for value in reader.reads[0])
    np.testing.assert_array_equal(region, pattern(4, 5)[1:2, 1:3])


def test_base_reader_has_no_pixels() -> None:
    with pytest.raises(NotImplementedError):
        SlideReader(_info(((4, 4),), (1.0,))).read_region(0, 0, 0, 1, 1)


# --- level choice --------------------------------------------------------------------------------


def test_best_level_is_the_coarsest_not_coarser_than_asked() -> None:
    reader = _levels_only((1.0, 2.0, 4.0, 16.0))
    asked = (0.25, 1.0, 1.5, 2.0, 3.9, 4.0, 15.0, 16.0, 1000.0)
    assert [reader.best_level_for_downsample(d) for d in asked] == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    unordered = _levels_only((1.0, 8.0, 2.0))  # the order of the levels does not matter
    assert [unordered.best_level_for_downsample(d) for d in (1.9, 2.0, 7.0, 8.0)] == [0, 2, 2, 1]
    twins = _levels_only((1.0, 2.0, 2.0))  # equal downsamples: the first one
    assert twins.best_level_for_downsample(3.0) == 1


def test_best_level_tolerance_is_exact_at_its_edge() -> None:
    assert LEVEL_TOLERANCE == 0.01
    edge = 2.0 * (1.0 + LEVEL_TOLERANCE)
    reader = _levels_only((1.0, edge))
    assert reader.best_level_for_downsample(2.0) == 1  # 2.02 counts as 2
    above = _levels_only((1.0, math.nextafter(edge, math.inf)))
    assert above.best_level_for_downsample(2.0) == 0
    scanner = _levels_only((1.0, 2.0005, 4.0161))  # as stored by real scanners
    assert [scanner.best_level_for_downsample(d) for d in (1.98, 2.0, 3.97, 4.0)] == [0, 1, 1, 2]


# --- thumbnails ----------------------------------------------------------------------------------


def test_thumbnail_read_piecewise_matches_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = pattern(48, 64)
    expected = cv2.resize(rgb, (16, 12), interpolation=cv2.INTER_AREA)
    monkeypatch.setattr(slide_base, "_THUMBNAIL_READ", 16)  # 4x4 thumbnail pixels per read
    reader = ArrayReader([rgb])
    thumb, downsample = reader.thumbnail(16)
    np.testing.assert_array_equal(thumb, expected)
    assert downsample == 4.0
    corners = [(x, y) for y in (0, 16, 32) for x in (0, 16, 32, 48)]
    assert reader.reads == [(x, y, 0, 16, 16) for x, y in corners]


def test_thumbnail_reads_the_coarse_level_once() -> None:
    base = pattern(48, 64)
    half = pattern(24, 32)[::-1]  # unlike base[::2, ::2]: shows which level was read
    reader = ArrayReader([base, half])
    thumb, downsample = reader.thumbnail(16)
    assert reader.reads == [(0, 0, 1, 32, 24)]
    np.testing.assert_array_equal(thumb, cv2.resize(half, (16, 12), interpolation=cv2.INTER_AREA))
    assert downsample == 4.0


def test_thumbnail_never_enlarges_and_checks_its_size() -> None:
    rgb = pattern(20, 30)
    reader = ArrayReader([rgb])
    thumb, downsample = reader.thumbnail(100)
    np.testing.assert_array_equal(thumb, rgb)
    assert downsample == 1.0
    tall, tall_downsample = ArrayReader([pattern(90, 30)]).thumbnail(45)
    assert tall.shape == (45, 15, 3) and tall_downsample == 2.0
    for max_size in (0, -5):
        with pytest.raises(ValueError, match=rf"max_size must be >= 1, got {max_size}"):
            reader.thumbnail(max_size)


# --- pixel helpers -------------------------------------------------------------------------------


def test_rgba_on_white_exact() -> None:
    rgba = np.array([[[0, 0, 0, 0], [200, 100, 0, 255], [0, 0, 0, 128]]], np.uint8)
    assert rgba_on_white(rgba).tolist() == [[[255, 255, 255], [200, 100, 0], [127, 127, 127]]]


def test_rgba_on_white_opaque_is_the_rgb_contiguous() -> None:
    rgba = np.dstack([pattern(3, 4), np.full((3, 4), 255, np.uint8)])
    rgb = rgba_on_white(rgba)
    np.testing.assert_array_equal(rgb, rgba[:, :, :3])
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous


def test_paste_window_copies_only_the_overlap() -> None:
    tile = np.arange(1, 13, dtype=np.int64).reshape(3, 4)  # 3 rows, 4 columns, no zero
    out = np.zeros((4, 5), np.int64)
    paste_window(out, (10, 20), tile, (8, 22))  # tile hangs over out's left edge
    expected = np.zeros((4, 5), np.int64)
    expected[2:4, 0:2] = tile[0:2, 2:4]
    np.testing.assert_array_equal(out, expected)
    inside = np.zeros((5, 6), np.int64)
    paste_window(inside, (0, 0), tile, (1, 2))
    assert inside[2:5, 1:5].tolist() == tile.tolist() and inside.sum() == tile.sum()
    covering = np.zeros((2, 2), np.int64)
    paste_window(covering, (5, 5), tile, (4, 4))
    assert covering.tolist() == [[6, 7], [10, 11]]


@pytest.mark.parametrize(
    "tile_origin", [(5, 0), (-4, 0), (0, 4), (0, -3), (5, 4), (-9, -9), (9, 1), (1, 9)]
)
def test_paste_window_without_overlap_leaves_out_alone(tile_origin: tuple[int, int]) -> None:
    out = np.full((4, 5, 3), 255, np.uint8)  # as the readers pad: white outside the image
    paste_window(out, (0, 0), np.zeros((3, 4, 3), np.uint8), tile_origin)
    assert (out == 255).all()


def test_level_position_is_a_floor_robust_to_rounding() -> None:
    assert [level_position(x, 2.0) for x in (0, 1, 2, 3, 7)] == [0, 0, 1, 1, 3]
    assert [level_position(x, 4.0) for x in (-1, -4, -5)] == [-1, -1, -2]  # floor, not toward 0
    # 50 / (100 / 22) is 10.999999999999998 in floating point: still pixel 11
    assert 50 / (100 / 22) < 11
    assert level_position(50, 100 / 22) == 11
    assert level_position(30, 2.0005) == 14
