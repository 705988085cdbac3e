"""One synthetic H&E-like image and its per-class instance labels, painted in memory.

Cells are drawn by :mod:`cellseg_d2.data.synthetic.shapes` and placed on a :class:`_Canvas` that
keeps the image and its instance map in step. Every image drawn with ``dense=True`` gets a packed
lymphocyte aggregate that brings it above :data:`DENSE_MIN_CELLS` cells when its sides are at
least 256 px (smaller images are packed as tightly as they allow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from cellseg_d2.data.synthetic.shapes import (
    Shape,
    base_class,
    class_style,
    clip_to_image,
    draw_shape,
)

__all__ = [
    "DENSE_MIN_CELLS",
    "MAX_CLASSES",
    "MIN_CELL_PIXELS",
    "check_num_classes",
    "synthesize_image",
]

#: Most classes the generator paints.
MAX_CLASSES = 16
#: Dense images of at least 256x256 px hold more than this many cells.
DENSE_MIN_CELLS = 200
#: Instances with fewer visible pixels are never kept.
MIN_CELL_PIXELS = 10

_CLASS_PROBABILITIES = np.array([0.45, 0.45, 0.05, 0.05])
_PIXELS_PER_CELL = 1750.0  # normal density: ~37 cells at 256x256, ~150 at 512x512
_MAX_OVERLAP = 0.15  # a new cell may cover at most this fraction of itself with older cells
_MIN_KEPT_FRACTION = 0.7  # ... and must leave every older cell at least this much of its area
_ATTEMPTS = 15  # placement tries per cell before it is given up
_DENSE_TARGET = (230, 300)  # cell count range aimed at in dense images
_PACKING_SPACING = 11.5  # grid spacing (px) of the lymphocyte packing in dense images


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Unit-variance noise, smooth over ``scale`` pixels: a coarse grid upsampled (cheap)."""
    rows, cols = int(np.ceil(height / scale)) + 3, int(np.ceil(width / scale)) + 3
    coarse = rng.normal(size=(rows, cols))
    field = ndimage.zoom(coarse, scale, order=3, mode="nearest")[:height, :width]
    return (field - field.mean()) / (field.std() + 1e-9)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Pink eosin-stained stroma: two scales of smooth stain variation, float RGB."""
    coarse = _smooth_noise(rng, height, width, 48.0)
    medium = _smooth_noise(rng, height, width, 12.0)
    haze = _smooth_noise(rng, height, width, 32.0)
    eosin = 0.65 * coarse + 0.35 * medium
    image = np.empty((height, width, 3))
    image[:] = (234.0, 184.0, 210.0)
    image += eosin[..., None] * np.array([-8.0, -20.0, -10.0])
    image += np.clip(haze, 0.0, None)[..., None] * np.array([-10.0, -12.0, -2.0])
    return image


class _Canvas:
    """The image being painted plus its instance map, with the cell-placement rules."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng = rng
        self.height, self.width = height, width
        self.rgb = _background(rng, height, width)
        self.texture = ndimage.gaussian_filter(rng.normal(size=(height, width)), 1.0)
        self.texture /= self.texture.std() + 1e-9
        self.speckles = ndimage.gaussian_filter(rng.normal(size=(height, width)), 0.7)
        self.speckles = self.speckles / (self.speckles.std() + 1e-9) > 1.3
        self.instances = np.zeros((height, width), np.int32)  # 0 = background, else index + 1
        self.classes: list[int] = []
        self.areas: list[int] = []  # current visible area of each instance
        self.full_areas: list[int] = []  # area when placed

    def try_place(self, cls: int, center: tuple[float, float]) -> bool:
        """Draw a cell at ``center`` if it is visible enough and overlaps others only slightly."""
        drawn = draw_shape(self.rng, cls, center)
        full_area = int(drawn.mask.sum())
        shape = clip_to_image(drawn, self.height, self.width)
        if shape is None:
            return False
        area = int(shape.mask.sum())
        if area < max(MIN_CELL_PIXELS, 0.3 * full_area):
            return False
        rows = slice(shape.top, shape.top + shape.mask.shape[0])
        cols = slice(shape.left, shape.left + shape.mask.shape[1])
        covered = self.instances[rows, cols][shape.mask]
        covered = covered[covered > 0]
        if covered.size > _MAX_OVERLAP * area:
            return False
        hit, lost = np.unique(covered, return_counts=True)
        for index, count in zip(hit - 1, lost, strict=True):
            left = self.areas[index] - int(count)
            if left < max(MIN_CELL_PIXELS, _MIN_KEPT_FRACTION * self.full_areas[index]):
                return False
        for index, count in zip(hit - 1, lost, strict=True):
            self.areas[index] -= int(count)
        self.instances[rows, cols][shape.mask] = len(self.classes) + 1
        self.classes.append(cls)
        self.areas.append(area)
        self.full_areas.append(area)
        self._paint(cls, shape, rows, cols)
        return True

    def _paint(self, cls: int, shape: Shape, rows: slice, cols: slice) -> None:
        """Blend the cell's colour into the image with a soft (antialiased) edge."""
        style = class_style(cls)
        jitter = self.rng.uniform(0.92, 1.08) + self.rng.normal(0.0, 0.02, 3)
        color = np.array(style.color) * jitter
        cell = color + style.texture * self.texture[rows, cols][..., None]
        cell -= shape.detail[..., None] * np.array(style.detail)
        if style.speckle:
            cell -= style.speckle * self.speckles[rows, cols][..., None] * self.rng.uniform(0.6, 1)
        alpha = ndimage.gaussian_filter(shape.mask.astype(np.float64), 0.6, mode="constant")
        alpha = np.maximum(alpha, shape.mask * 0.85)[..., None]
        crop = self.rgb[rows, cols]
        crop += alpha * (cell - crop)


def _cluster_sampler(
    rng: np.random.Generator, height: int, width: int, clusters: int, clustered: float
) -> Callable[[], tuple[float, float]]:
    """A centre proposer: with probability ``clustered`` near a random cluster, else uniform."""
    centres = rng.uniform((0, 0), (height, width), size=(clusters, 2))
    spreads = rng.uniform(0.06, 0.12, clusters) * min(height, width) + 6.0

    def sample() -> tuple[float, float]:
        if rng.random() < clustered:
            k = int(rng.integers(clusters))
            y, x = rng.normal(centres[k], spreads[k])
            return float(np.clip(y, 0, height - 1e-6)), float(np.clip(x, 0, width - 1e-6))
        return float(rng.uniform(0, height)), float(rng.uniform(0, width))

    return sample


def _pack_lymphocytes(canvas: _Canvas, target: int) -> None:
    """Fill an aggregate of lymphocytes outward from a random point until ``target`` cells.

    Candidate centres lie on jittered grids tried nearest-first, so the aggregate is compact; a
    second, offset grid fills the gaps the first one left.
    """
    rng = canvas.rng
    origin = rng.uniform((0, 0), (canvas.height, canvas.width))
    for offset in (0.0, _PACKING_SPACING / 2.0):
        ys = np.arange(offset, canvas.height, _PACKING_SPACING)
        xs = np.arange(offset, canvas.width, _PACKING_SPACING)
        grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
        grid = grid + rng.uniform(-1.5, 1.5, grid.shape)
        order = np.argsort(np.hypot(*(grid - origin).T) + rng.uniform(0, 8.0, len(grid)))
        grid[:, 0] = np.clip(grid[:, 0], 0.0, canvas.height - 1e-6)
        grid[:, 1] = np.clip(grid[:, 1], 0.0, canvas.width - 1e-6)
        for y, x in grid[order]:
            if len(canvas.classes) >= target:
                return
            canvas.try_place(2, (float(y), float(x)))


def synthesize_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    dense: bool = False,
    required_classes: Sequence[int] = (1, 2),
    num_classes: int = 4,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Paint one synthetic H&E-like image and its per-class instance labels.

    Why: this is the unit the dataset writer repeats; exposing it lets tests and notebooks make
    an image in memory without touching the disk.

    Cells are placed one by one; a cell is rejected (and retried elsewhere) when less than 30% of
    it, or fewer than 10 pixels, would be visible, when more than 15% of it would cover older
    cells, or when it would leave an older cell less than 70% of its area. A later cell overwrites
    the pixels of the cells it covers, in the image and in the labels, so every label pixel is
    owned by exactly one instance and the label always matches what is painted.

    Args:
        rng: the only source of randomness; the same generator state gives the same output.
        height: image height in pixels (>= 1).
        width: image width in pixels (>= 1).
        dense: add a packed lymphocyte aggregate (more than 200 cells at 256x256 px or larger).
        required_classes: classes placed first so that each is present (in tiny images a cell
            may still fail to fit; it is then absent).
        num_classes: number of classes N (1..16); classes above 4 repeat the looks of 1..4
            with rotated colours.

    Raises:
        ValueError: a non-positive size, a bad ``num_classes`` or a class outside 1..N.

    Returns:
        ``(rgba, labels)``: an HxWx4 uint8 image with alpha 255, and ``{K: HxW float64}`` for
        each class K present, 0 for background and one distinct non-zero id per cell. Ids are
        non-contiguous, start above 1 and increase across classes 1..N (like the real export).
    """
    # Long for its docstring: the code is one pass (plan the cells, place them, paint).
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    check_num_classes(num_classes)
    if not set(required_classes) <= set(range(1, num_classes + 1)):
        raise ValueError(
            f"required_classes must be within 1..{num_classes}, got {list(required_classes)}"
        )
    canvas = _Canvas(rng, height, width)
    area = height * width
    clusters = 1 + int(area // 80_000)
    # (clusters, share of clustered cells) of each base class.
    placement = {1: (clusters, 0.8), 2: (clusters, 0.5), 3: (1, 0.0), 4: (1, 0.0)}
    samplers = {
        cls: _cluster_sampler(rng, height, width, *placement[base_class(cls)])
        for cls in range(1, num_classes + 1)
    }
    probabilities = _CLASS_PROBABILITIES[[base_class(k) - 1 for k in range(1, num_classes + 1)]]
    probabilities = probabilities / probabilities.sum()
    count = int(np.clip(round(area / _PIXELS_PER_CELL * rng.uniform(0.85, 1.15)), 3, 170))
    if dense:
        count = max(count // 2, 3)  # the aggregate brings the rest
    plan = list(required_classes)
    extra = max(count - len(plan), 0)
    plan += (rng.choice(num_classes, size=extra, p=probabilities) + 1).tolist()
    for cls in plan:
        for _ in range(_ATTEMPTS):
            if canvas.try_place(int(cls), samplers[int(cls)]()):
                break
    if dense and num_classes >= 2:
        _pack_lymphocytes(canvas, int(rng.integers(*_DENSE_TARGET)))

    noise = rng.normal(0.0, 3.5, canvas.rgb.shape)
    rgba = np.full((height, width, 4), 255, np.uint8)
    rgba[..., :3] = np.clip(np.rint(canvas.rgb + noise), 0, 255).astype(np.uint8)
    return rgba, _relabel(rng, canvas, num_classes)


def check_num_classes(num_classes: int) -> None:
    """Raise ``ValueError`` unless ``num_classes`` is an integer in 1..MAX_CLASSES.

    Why: the dataset writer checks the count before it removes or writes anything.
    """
    if not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be an integer in 1..{MAX_CLASSES}, got {num_classes!r}")


def _relabel(rng: np.random.Generator, canvas: _Canvas, num_classes: int) -> dict[int, np.ndarray]:
    """Give the kept instances non-contiguous ids, grouped by class, one label image per class."""
    areas = np.bincount(canvas.instances.ravel(), minlength=len(canvas.classes) + 1)
    classes = np.array([0, *canvas.classes])
    labels: dict[int, np.ndarray] = {}
    next_id = int(rng.integers(1, 5))
    for cls in range(1, num_classes + 1):
        members = np.flatnonzero((classes == cls) & (areas >= MIN_CELL_PIXELS))
        if members.size == 0:
            continue
        lookup = np.zeros(len(classes), np.float64)
        steps = rng.integers(1, 5, members.size)
        lookup[members] = next_id + np.cumsum(steps)
        next_id = int(lookup[members[-1]])
        labels[cls] = lookup[canvas.instances]
    return labels
