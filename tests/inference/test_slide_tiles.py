"""The slide tile plan: model-scale tiles, the right level, cores that partition the slide."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cellseg_d2.errors import ConfigError
from cellseg_d2.inference.slide_tiles import (
    SlideTile,
    TissueFilter,
    check_overlap,
    choose_level,
    plan_slide_tiles,
    slide_scale,
    tiles_touching_tissue,
)
from tests.inference.slide_fakes import FakeSlideInfo


def _info(width: int = 317, height: int = 250, downsamples=(1.0, 2.0, 8.0)) -> FakeSlideInfo:
    dims = tuple((round(width / d), round(height / d)) for d in downsamples)
    return FakeSlideInfo(None, width, height, dims, tuple(downsamples), 0.5, (0, 0), "fake")


def _coverage(tiles: list[SlideTile], width: int, height: int, use_core: bool) -> np.ndarray:
    count = np.zeros((height, width), np.int32)
    for tile in tiles:
        x0, y0, x1, y1 = (
            tile.core if use_core else (tile.x, tile.y, tile.x + tile.width, tile.y + tile.height)
        )
        count[y0:y1, x0:x1] += 1
    return count


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5, 0.37, 1.3])
def test_cores_partition_the_slide_and_windows_stay_inside(scale: float) -> None:
    info = _info()
    tiles = plan_slide_tiles(info, scale, tile_size=64, overlap=16)
    assert (_coverage(tiles, info.width, info.height, use_core=True) == 1).all()
    windows = _coverage(tiles, info.width, info.height, use_core=False)
    assert windows.min() >= 1
    by_position = {(t.row, t.column): t for t in tiles}
    for (row, column), tile in by_position.items():  # rounding never shrinks the overlap
        right = by_position.get((row, column + 1))
        assert right is None or tile.x + tile.width - right.x >= math.ceil(16 / scale)
    for tile in tiles:
        assert 0 <= tile.x and tile.x + tile.width <= info.width
        assert 0 <= tile.y and tile.y + tile.height <= info.height
        # the core keeps at least half the overlap (in level-0 px) from every inner edge
        half = int(16 / scale / 2) - 1
        x0, y0, x1, y1 = tile.core
        assert x0 == 0 or x0 - tile.x >= half
        assert x1 == info.width or tile.x + tile.width - x1 >= half
        assert y0 == 0 or y0 - tile.y >= half
        assert y1 == info.height or tile.y + tile.height - y1 >= half


def test_plan_is_row_major_with_grid_indices_and_model_sizes() -> None:
    info = _info()
    tiles = plan_slide_tiles(info, 2.0, tile_size=64, overlap=16)
    columns = max(t.column for t in tiles) + 1
    assert [t.index for t in tiles] == list(range(len(tiles)))
    assert all(t.index == t.row * columns + t.column for t in tiles)
    full = [t for t in tiles if t.width == 32 and t.height == 32]
    assert full and all((t.model_width, t.model_height) == (64, 64) for t in full)
    assert all(t.level == 0 and t.read_width == t.width for t in tiles)  # enlarged: level 0
    assert tiles == plan_slide_tiles(info, 2.0, tile_size=64, overlap=16)  # deterministic


def test_level_is_the_coarsest_not_coarser_than_needed() -> None:
    info = _info()
    half = plan_slide_tiles(info, 0.5, tile_size=64, overlap=16)
    assert {t.level for t in half} == {1}
    full = [t for t in half if t.width == 128]
    assert full and all((t.read_width, t.model_width) == (64, 64) for t in full)
    assert full[0].level0_per_model_pixel == (2.0, 2.0)
    assert choose_level((1.0, 2.0, 8.0), 1 / 0.6) == 0  # 1.67x: level 1 would be too coarse
    assert choose_level((1.0, 2.0, 8.0), 2.5) == 1
    assert choose_level((1.0, 2.0, 8.0), 100.0) == 2
    assert choose_level((1.0, 4.000458, 16.0018), 4.0) == 1  # scanner rounding tolerated
    assert choose_level((1.0, 4.1), 4.0) == 0


def test_small_slide_is_one_small_tile() -> None:
    tiles = plan_slide_tiles(_info(40, 30), 1.0, tile_size=64, overlap=16)
    assert len(tiles) == 1
    assert (tiles[0].width, tiles[0].height, tiles[0].core) == (40, 30, (0, 0, 40, 30))


def test_tissue_mask_skips_background_but_keeps_indices() -> None:
    info = _info()
    full = plan_slide_tiles(info, 1.0, tile_size=64, overlap=16)
    mask = np.zeros((32, 40), bool)  # downsample 8
    mask[:, :10] = True  # tissue in x < 80
    kept = plan_slide_tiles(info, 1.0, tile_size=64, overlap=16, tissue=(mask, 8.0))
    assert kept == [t for t in full if t.x < 80]
    assert tiles_touching_tissue(full, np.zeros((32, 40), bool), 8.0) == []


def test_overlap_checks() -> None:
    with pytest.raises(ConfigError, match="largest cell"):
        plan_slide_tiles(_info(), 1.0, tile_size=64, overlap=16, max_cell_size=20)
    plan_slide_tiles(_info(), 1.0, tile_size=64, overlap=16, max_cell_size=16)
    with pytest.raises(ConfigError):
        check_overlap(64, None, 64)
    with pytest.raises(ConfigError):
        plan_slide_tiles(_info(), 0.0, tile_size=64, overlap=16)


def test_slide_scale_rules() -> None:
    assert slide_scale(0.5, 0.25) == 2.0
    assert slide_scale(None, None) == 1.0
    assert slide_scale(0.5, 0) == 1.0
    with pytest.raises(ConfigError, match="unknown"):
        slide_scale(None, 0.25)


def test_tissue_filter_keeps_points_on_or_next_to_tissue() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True  # level-0 [16, 40) x [16, 40) at downsample 8
    keep = TissueFilter(mask, 8.0)
    assert keep(20.0, 20.0) and keep(39.9, 16.0)
    assert keep(45.0, 30.0)  # next mask pixel: the coarse mask's edge is forgiven
    assert not keep(60.0, 30.0) and not keep(5.0, 70.0)
    assert not keep(-100.0, 1e9)  # far outside: clipped to the border pixel, not an error
    other = mask.copy()
    other[9, 9] = True
    assert TissueFilter(other, 8.0).digest != keep.digest == TissueFilter(mask, 8.0).digest


def test_tissue_filter_keeps_many_points_as_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((23, 31)) < 0.1
    keep = TissueFilter(mask, 4.0)
    xs = rng.uniform(-20, 31 * 4 + 20, 3000)
    ys = rng.uniform(-20, 23 * 4 + 20, 3000)

    def near(x: float, y: float) -> bool:  # the rule, spelled out: the pixel or a neighbour
        r = min(max(int(y // 4.0), 0), 22)
        c = min(max(int(x // 4.0), 0), 30)
        return bool(mask[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any())

    expected = np.array([near(x, y) for x, y in zip(xs, ys)])
    assert 0.2 < expected.mean() < 0.9  # both answers are exercised
    assert np.array_equal(keep.keeps(xs, ys), expected)
    assert [keep(x, y) for x, y in zip(xs[:50], ys[:50])] == expected[:50].tolist()
    assert keep.keeps(np.empty(0), np.empty(0)).shape == (0,)
