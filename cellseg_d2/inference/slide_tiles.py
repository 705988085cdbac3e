"""The tile plan of a whole slide: which level-0 windows to read, at which level, and who owns what.

A slide is far too large for the model and usually scanned at another pixel size than the model
was trained at. So it is cut into tiles of ``tile_size`` pixels *at the model's pixel size*,
overlapping by ``overlap`` model pixels, each read from the coarsest pyramid level that is still
at least as fine as the model needs (never a coarser one: detail lost there cannot be resampled
back) and resized to the model's scale.

Every tile owns a *core*: the part of the slide nearer to it than to its neighbours (its window
minus half of each inner overlap). The cores of all tiles, background ones included, partition
the level-0 image exactly, so a cell is kept by exactly one tile: the one whose core holds the
centre of the cell's box (:mod:`~cellseg_d2.inference.slide_stitch`). That tile sees the cell
whole as long as ``overlap`` is at least the largest cell (:func:`check_overlap`).

The plan is a pure function of the slide's size, pyramid and the settings: the same tiles with
the same ``index`` (position in the full row-major grid, skipped tiles included) on every run,
which is what resuming and splitting one slide among processes rely on.

Coordinates: level-0 pixels, ``x`` to the right and ``y`` down, windows as ``x, y, width,
height`` with exclusive ends, pixel ``i`` covering ``[i, i + 1)``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from cellseg_d2.errors import ConfigError

if TYPE_CHECKING:  # types only: only the description's attributes are used here
    from cellseg_d2.data.slide import SlideInfo

__all__ = [
    "LEVEL_DOWNSAMPLE_TOLERANCE",
    "SlideTile",
    "TissueFilter",
    "check_overlap",
    "choose_level",
    "plan_slide_tiles",
    "slide_scale",
    "tiles_touching_tissue",
]

#: A level whose downsample exceeds the one asked for by at most this fraction still counts as
#: fine enough. Scanners report e.g. 4.000458 for a 4x level; without this, asking for 4.0 would
#: read level 0 and resize 16x more pixels for a 0.01 % difference in scale.
LEVEL_DOWNSAMPLE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SlideTile:
    """One tile of the plan: where it reads, at which level, what size the model sees, what it owns.

    Attributes:
        index: position in the full row-major grid (``row * columns + column``), stable across
            runs whatever is skipped.
        row, column: grid position.
        x, y, width, height: the level-0 window it covers (inside the slide).
        level: the pyramid level read; ``downsample`` is that level's downsample.
        read_width, read_height: the size read at ``level`` (level pixels).
        model_width, model_height: the size of the image the model gets (model pixels).
        core: ``(x0, y0, x1, y1)`` level-0 region this tile owns (exclusive ends).
    """

    index: int
    row: int
    column: int
    x: int
    y: int
    width: int
    height: int
    level: int
    downsample: float
    read_width: int
    read_height: int
    model_width: int
    model_height: int
    core: tuple[int, int, int, int]

    @property
    def level0_per_model_pixel(self) -> tuple[float, float]:
        """``(sx, sy)``: level-0 pixels per model pixel, per axis, exactly as the tile was resized.

        The read covers ``read_width * downsample`` level-0 pixels (which may differ from
        ``width`` by a rounding), and the resize maps its edges onto the model image's edges,
        so a model coordinate ``u`` lies at level-0 ``x + u * sx``.
        """
        return (
            self.read_width * self.downsample / self.model_width,
            self.read_height * self.downsample / self.model_height,
        )

    @property
    def window(self) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` level-0 window, the order the tile merge uses."""
        return self.y, self.x, self.y + self.height, self.x + self.width

    def owns(self, center_x: float, center_y: float) -> bool:
        """Whether a level-0 point lies in this tile's core (half-open, so exactly one tile)."""
        x0, y0, x1, y1 = self.core
        return x0 <= center_x < x1 and y0 <= center_y < y1


def slide_scale(slide_pixel_size: float | None, model_pixel_size: float | None) -> float:
    """How much the slide is enlarged for the model: slide pixel size / model pixel size.

    Why a function: the rule for unknown sizes lives in one place. A model without a pixel size
    (``None`` or 0) takes the slide as it is (1.0). A model with one needs the slide's, else the
    cells would silently come out at the wrong size.

    Raises:
        ConfigError: the model has a pixel size and the slide has none (or a non-positive one).
    """
    if not model_pixel_size:
        return 1.0
    if model_pixel_size < 0:
        raise ConfigError(f"model pixel size must be positive, got {model_pixel_size}")
    if slide_pixel_size is None or slide_pixel_size <= 0:
        raise ConfigError(
            f"the model works at {model_pixel_size} um/px but the slide's pixel size is "
            f"unknown ({slide_pixel_size!r}); give it explicitly (a pixel size override)"
        )
    return float(slide_pixel_size) / float(model_pixel_size)


def choose_level(level_downsamples: Sequence[float], downsample: float) -> int:
    """The level to read for a wanted downsample: the coarsest one not coarser than asked.

    Same rule as a reader's ``best_level_for_downsample`` (OpenSlide's), with a
    :data:`LEVEL_DOWNSAMPLE_TOLERANCE` for the scanners' near-integer downsamples. Level 0 when
    the model needs the slide enlarged (``downsample < 1``).
    """
    best, best_downsample = 0, 0.0
    for level, level_downsample in enumerate(level_downsamples):
        fine_enough = level_downsample <= downsample * (1 + LEVEL_DOWNSAMPLE_TOLERANCE)
        if fine_enough and level_downsample > best_downsample:
            best, best_downsample = level, level_downsample
    return best


def check_overlap(overlap: int, max_cell_size: int | None, tile_size: int) -> None:
    """Check the tiling settings; ``overlap`` must hold the largest cell (model pixels).

    Why: a cell owned by a tile (box centre in its core) lies wholly inside that tile only if
    the cell is at most ``overlap`` wide: its centre is at least ``overlap / 2`` from the tile's
    inner edges. A cell cut by a tile edge also keeps its (shifted) box centre on the side of the
    tile that sees it whole under the same condition, so it is never kept cut.

    Raises:
        ConfigError: ``tile_size`` not positive, ``overlap`` negative or not below
            ``tile_size``, or below ``max_cell_size``.
    """
    if tile_size <= 0:
        raise ConfigError(f"tile size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ConfigError(f"tile overlap ({overlap}) must be in [0, tile size {tile_size})")
    if max_cell_size is not None and overlap < max_cell_size:
        raise ConfigError(
            f"tile overlap ({overlap} px) is smaller than the largest cell ({max_cell_size} px "
            f"at the model's pixel size): cells on tile seams would be cut; raise the overlap"
        )


def _starts_and_cores(size: int, window: int, step: int) -> list[tuple[int, int, int, int]]:
    """Per tile along one axis: ``(start, length, core_start, core_end)``.

    Starts are ``step`` apart; the last one is aligned to the far edge so no tile reads outside
    the slide (its overlap with the previous tile is then larger). Core boundaries are the
    middles of the overlaps; the first core starts at 0 and the last ends at ``size``.
    """
    if size <= window:
        return [(0, size, 0, size)]
    starts = list(range(0, size - window, step)) + [size - window]
    bounds = [0]
    for before, after in zip(starts, starts[1:]):
        bounds.append((after + before + window) // 2)
    bounds.append(size)
    return [(start, window, bounds[i], bounds[i + 1]) for i, start in enumerate(starts)]


def tiles_touching_tissue(
    tiles: Sequence[SlideTile], mask: np.ndarray, mask_downsample: float
) -> list[SlideTile]:
    """The tiles whose level-0 window touches a tissue pixel of a low-resolution mask.

    Why the read window and not the core: a cell at the edge of the tissue is owned by one tile
    but must be seen whole by it, and a tile that reads tissue anywhere may own one.

    Args:
        tiles: from the plan.
        mask: bool tissue mask; pixel ``(r, c)`` covers level-0 ``[c * d, (c + 1) * d)`` x
            ``[r * d, (r + 1) * d)`` with ``d = mask_downsample``.
        mask_downsample: level-0 pixels per mask pixel.
    """
    if mask_downsample <= 0:
        raise ValueError(f"mask downsample must be positive, got {mask_downsample}")
    mask = np.asarray(mask, dtype=bool)
    rows, cols = mask.shape[:2]
    kept = []
    for tile in tiles:
        r0 = min(max(int(math.floor(tile.y / mask_downsample)), 0), rows)
        c0 = min(max(int(math.floor(tile.x / mask_downsample)), 0), cols)
        r1 = min(int(math.ceil((tile.y + tile.height) / mask_downsample)), rows)
        c1 = min(int(math.ceil((tile.x + tile.width) / mask_downsample)), cols)
        if mask[r0:r1, c0:c1].any():
            kept.append(tile)
    return kept


@dataclass(frozen=True, eq=False)
class TissueFilter:
    """Keeps the cells whose centroid lies on tissue of the slide's low-resolution mask.

    Why: a tile is predicted when it touches tissue, but much of it may be glass, where a model
    trained on tissue finds specks, dust and the scanner's noise. Cells off the tissue are not
    kept (the field's tools filter the same way). The mask pixel of the centroid and its 8
    neighbours are looked at, so a nucleus on the tissue's edge is not lost to the mask's coarse
    pixels. Picklable: sent to the ranks and cell workers.

    Attributes:
        mask: bool tissue mask, pixel ``(r, c)`` covering level-0 ``[c * d, (c + 1) * d)`` x
            ``[r * d, (r + 1) * d)``.
        downsample: ``d``, level-0 pixels per mask pixel.
    """

    mask: np.ndarray
    downsample: float

    def __call__(self, x: float, y: float) -> bool:
        """Whether level-0 point ``(x, y)`` lies on (or next to) tissue."""
        return bool(self.keeps(np.array([x], np.float64), np.array([y], np.float64))[0])

    def keeps(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Which level-0 points ``(xs[i], ys[i])`` lie on (or next to) tissue, as a bool array.

        Why vectorised: the slide loop filters a tile's few hundred cells at once; a Python
        call per cell cost the model's process ~10 µs a cell. Points beyond the mask are
        clipped to its border pixels (never an error).
        """
        rows, cols = self.mask.shape[:2]
        r = np.clip(np.floor_divide(np.asarray(ys, np.float64), self.downsample), 0, rows - 1)
        c = np.clip(np.floor_divide(np.asarray(xs, np.float64), self.downsample), 0, cols - 1)
        return self._near_tissue[r.astype(np.int64), c.astype(np.int64)]

    @functools.cached_property
    def _near_tissue(self) -> np.ndarray:
        """The mask grown by one pixel (3 x 3, nothing beyond its border): a pixel is near
        tissue when it or one of its 8 neighbours is tissue."""
        return ndi.binary_dilation(np.asarray(self.mask, bool), structure=np.ones((3, 3), bool))

    @property
    def digest(self) -> str:
        """A short hash of the mask (a resumed store must have used the same one)."""
        packed = np.packbits(np.asarray(self.mask, bool)).tobytes()
        text = f"{self.mask.shape}:{self.downsample!r}:".encode() + packed
        return hashlib.sha256(text).hexdigest()[:16]


def plan_slide_tiles(
    info: SlideInfo,
    scale: float,
    tile_size: int,
    overlap: int,
    tissue: tuple[np.ndarray, float] | None = None,
    max_cell_size: int | None = None,
) -> list[SlideTile]:
    """Cut a slide into overlapping model-scale tiles, skipping those without tissue.

    The grid is laid out in level-0 pixels: a tile covers ``round(tile_size / scale)`` level-0
    pixels and overlaps the previous one by at least ``ceil(overlap / scale)``; the last
    row and column are aligned to the slide's edge (so no tile reads past it) and a slide
    smaller than one tile is one smaller tile. Each tile reads the level
    :func:`choose_level` gives for ``1 / scale`` and is resized to ``round(width * scale)``
    model pixels.

    Args:
        info: the slide's size and pyramid (``width``, ``height``, ``level_dimensions``,
            ``level_downsamples``).
        scale: slide pixel size / model pixel size (2.0: the model sees the slide enlarged 2x);
            see :func:`slide_scale`.
        tile_size: tile side at the model's pixel size.
        overlap: overlap of neighbouring tiles at the model's pixel size; at least the largest
            cell (:func:`check_overlap`).
        tissue: ``(mask, mask_downsample)`` to skip tiles that read no tissue, or None for all.
        max_cell_size: the largest cell at the model's pixel size, checked against ``overlap``.

    Returns:
        The kept tiles in row-major order; ``index`` counts the full grid.

    Raises:
        ConfigError: bad tiling settings or a non-positive scale.
    """
    check_overlap(overlap, max_cell_size, tile_size)
    if not scale > 0 or not math.isfinite(scale):
        raise ConfigError(f"slide scale must be a positive number, got {scale}")
    window = max(1, round(tile_size / scale))
    # ceil: rounding must never leave less level-0 overlap than the largest cell needs
    step = max(1, window - math.ceil(overlap / scale - 1e-9))
    level = choose_level(info.level_downsamples, 1.0 / scale)
    downsample = float(info.level_downsamples[level])
    columns = _starts_and_cores(info.width, window, step)
    rows = _starts_and_cores(info.height, window, step)
    tiles = []
    for row, (y, height, core_y0, core_y1) in enumerate(rows):
        for column, (x, width, core_x0, core_x1) in enumerate(columns):
            tiles.append(
                SlideTile(
                    index=row * len(columns) + column,
                    row=row,
                    column=column,
                    x=x,
                    y=y,
                    width=width,
                    height=height,
                    level=level,
                    downsample=downsample,
                    read_width=max(1, round(width / downsample)),
                    read_height=max(1, round(height / downsample)),
                    model_width=max(1, round(width * scale)),
                    model_height=max(1, round(height * scale)),
                    core=(core_x0, core_y0, core_x1, core_y1),
                )
            )
    if tissue is not None:
        tiles = tiles_touching_tissue(tiles, *tissue)
    return tiles
