"""Synthetic H&E-like cell images in exactly the layout of the real (MoNuSAC-style) dataset.

Why this exists: the tests, the quick-start demo and CI need a dataset that

* has the same files, dtypes and quirks as the real export (RGBA LZW images with a constant
  alpha channel, one float64 instance-label mask per *present* class, instance ids that are
  non-contiguous and run across the classes of an image, a test split with a name-to-id map),
* is small and byte-for-byte reproducible from a seed, and
* has four classes (or any number, ``num_classes``) that a Mask R-CNN can tell apart after a
  few minutes of CPU training.

Layout written under ``output``::

    train/<uuid>/image.tif          RGBA uint8, LZW-compressed, alpha 255
    train/<uuid>/classK.tif         float64 instance labels (0 = background), K in 1..N,
                                    only for the classes present in that image
    test_release/<uuid>.tif         RGBA uint8, LZW-compressed
    test_image_name_to_ids.json     [{"file_name": "<uuid>.tif", "id": i, "height": h,
                                      "width": w}, ...] with ids 1..M
    test_gt/<uuid>/classK.tif       ground truth of the test images, same format as train

The classes mimic haematoxylin & eosin stained tissue (:data:`CLASS_NAMES`):

1. epithelial: ~45% of cells, large (radius 8-14 px) elongated polygonal nuclei, purple-pink
   with mottled chromatin; they grow in clusters.
2. lymphocyte: ~45%, small (radius 4-7 px) round, dark blue-purple and nearly uniform.
3. neutrophil: ~5%, medium (radius 6-9 px), 2-4 overlapping lobes forming one cell,
   dark violet with darker lobe outlines.
4. macrophage: ~5%, large (radius 10-16 px) irregular, pale brownish with an eccentric darker
   nucleus.

Every image whose index in its split is a multiple of :data:`DENSE_EVERY` is *dense*: a packed
lymphocyte aggregate brings it above :data:`DENSE_MIN_CELLS` cells when its sides are at least
256 px (smaller images are packed as tightly as they allow). Every image holds at least one
epithelial cell, one lymphocyte and one rare cell (neutrophils on even indices, macrophages on
odd ones), so any two consecutive images normally show all four classes.

With ``num_classes`` N other than 4, class K looks like class ``(K - 1) % 4 + 1`` above with its
colour channels rotated once per cycle of four (so classes 5 and 1 differ in colour), drawn with
the relative frequency of that base class; every image holds classes 1 and 2 (as far as N
allows) and one of classes 3..N, in turn.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellseg_d2.data.io import write_tiff
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import (
    DEFAULT_CLASS_NAMES,
    ID_MAP_NAME,
    IMAGE_FILE_NAME,
    TEST_DIR,
    TEST_GT_DIR,
    TRAIN_DIR,
    class_file_name,
)

__all__ = [
    "CLASS_NAMES",
    "DENSE_EVERY",
    "DENSE_MIN_CELLS",
    "MAX_CLASSES",
    "MIN_IMAGE_SIZE",
    "generate_synthetic_dataset",
    "synthesize_image",
]

logger = logging.getLogger(__name__)

#: Class ids (as in ``classK.tif``) and what they imitate; classes above 4 repeat these looks.
CLASS_NAMES: dict[int, str] = dict(enumerate(DEFAULT_CLASS_NAMES, start=1))
#: Most classes the generator paints.
MAX_CLASSES = 16
#: Every image whose index in its split is a multiple of this is dense.
DENSE_EVERY = 20
#: Dense images of at least 256x256 px hold more than this many cells.
DENSE_MIN_CELLS = 200
#: Smallest accepted image side, in pixels.
MIN_IMAGE_SIZE = 32
#: Instances with fewer visible pixels are never kept.
MIN_CELL_PIXELS = 10

_CLASS_PROBABILITIES = np.array([0.45, 0.45, 0.05, 0.05])
_PIXELS_PER_CELL = 1750.0  # normal density: ~37 cells at 256x256, ~150 at 512x512
_MAX_OVERLAP = 0.15  # a new cell may cover at most this fraction of itself with older cells
_MIN_KEPT_FRACTION = 0.7  # ... and must leave every older cell at least this much of its area
_ATTEMPTS = 15  # placement tries per cell before it is given up
_DENSE_TARGET = (230, 300)  # cell count range aimed at in dense images
_PACKING_SPACING = 11.5  # grid spacing (px) of the lymphocyte packing in dense images


@dataclass(frozen=True)
class _Style:
    """How a class is painted: RGB base colour, texture strength and outline/detail shading."""

    color: tuple[float, float, float]
    texture: float  # amplitude of the fine mottling, in grey levels
    detail: tuple[float, float, float]  # RGB drop where the shape's detail map is 1
    speckle: float  # darkening of chromatin speckles, in grey levels


_STYLES: dict[int, _Style] = {
    1: _Style(color=(160, 86, 170), texture=24.0, detail=(40, 38, 30), speckle=38.0),
    2: _Style(color=(56, 36, 112), texture=7.0, detail=(14, 10, 18), speckle=0.0),
    3: _Style(color=(104, 30, 134), texture=9.0, detail=(50, 22, 50), speckle=0.0),
    4: _Style(color=(200, 160, 126), texture=12.0, detail=(70, 78, 40), speckle=0.0),
}


@dataclass
class _Shape:
    """A cell drawn on a local crop whose top-left pixel sits at ``(top, left)`` in the image."""

    top: int
    left: int
    mask: np.ndarray  # bool crop
    detail: np.ndarray  # float crop in [0, 1]: outlines, lobe borders, nucleus


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


def _radial_shape(
    rng: np.random.Generator,
    center: tuple[float, float],
    semi_axes: tuple[float, float],
    roughness: float,
    harmonics: int = 4,
    angle: float | None = None,
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """A rotated ellipse with a wobbly boundary (low angular harmonics) on a local crop.

    Returns:
        ``(top, left, mask, rho)``: crop origin in image pixels, the bool mask and the normalised
        radius (1 on the boundary), which callers use to shade outlines.
    """
    a, b = semi_axes
    angle = rng.uniform(0.0, np.pi) if angle is None else angle
    orders = np.arange(2, 2 + harmonics)
    amplitudes = rng.normal(0.0, roughness, harmonics) / np.sqrt(orders - 1)
    amplitudes *= min(1.0, 0.35 / max(np.abs(amplitudes).sum(), 1e-9))  # wobble stays <= 35%
    phases = rng.uniform(0.0, 2.0 * np.pi, harmonics)
    half = int(np.ceil(max(a, b) * 1.35)) + 2
    cy, cx = center
    iy, ix = int(np.floor(cy)), int(np.floor(cx))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    yy -= cy - iy
    xx -= cx - ix
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    rho = np.hypot(u / a, v / b)
    phi = np.arctan2(v / b, u / a)
    boundary = 1.0 + np.tensordot(
        amplitudes, np.cos(orders[:, None, None] * phi + phases[:, None, None]), axes=1
    )
    rho = rho / boundary
    return iy - half, ix - half, rho <= 1.0, rho


def _rim(rho: np.ndarray, width: float = 0.25) -> np.ndarray:
    """1 on a shape's boundary, fading to 0 at ``1 - width`` of its normalised radius."""
    return np.clip((rho - (1.0 - width)) / width, 0.0, 1.0)


def _base_class(cls: int) -> int:
    """The class 1..4 whose shape, colour and frequency class ``cls`` (1..N) repeats."""
    return (cls - 1) % len(CLASS_NAMES) + 1


def _style(cls: int) -> _Style:
    """The style of class ``cls``: its base class's, colours rotated once per cycle of four."""
    style = _STYLES[_base_class(cls)]
    shift = (cls - 1) // len(CLASS_NAMES)
    if shift == 0:
        return style
    color = tuple(np.roll(style.color, shift).tolist())
    detail = tuple(np.roll(style.detail, shift).tolist())
    return _Style(color=color, texture=style.texture, detail=detail, speckle=style.speckle)


def _draw_shape(rng: np.random.Generator, cls: int, center: tuple[float, float]) -> _Shape:
    """Draw one cell of class ``cls`` centred near ``center`` (local crop, not yet clipped)."""
    cls = _base_class(cls)
    if cls == 1:  # epithelial: large, elongated, polygonal
        a = rng.uniform(8.0, 14.0)
        top, left, mask, rho = _radial_shape(rng, center, (a, a * rng.uniform(0.5, 0.8)), 0.07, 5)
        return _Shape(top, left, mask, _rim(rho))
    if cls == 2:  # lymphocyte: small, round
        r = rng.uniform(4.0, 7.0)
        top, left, mask, rho = _radial_shape(rng, center, (r, r * rng.uniform(0.85, 1.0)), 0.02)
        return _Shape(top, left, mask, _rim(rho, 0.3))
    if cls == 3:  # neutrophil: 2-4 overlapping lobes on an arc
        lobes = int(rng.integers(2, 5))
        lobe_radius = rng.uniform(3.0, 4.2)
        spread = rng.uniform(0.55, 0.75) * 2.0 * np.pi * (lobes - 1) / lobes
        step = spread / (lobes - 1)
        # Adjacent lobes overlap (centre distance <= 1.7 radii) so the cell is one component.
        distance = min(rng.uniform(3.0, 5.0), 0.85 * lobe_radius / np.sin(step / 2.0))
        base = rng.uniform(0.0, 2.0 * np.pi)
        half = int(np.ceil(distance + lobe_radius)) + 2
        cy, cx = center
        iy, ix = int(np.floor(cy)), int(np.floor(cx))
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
        yy -= cy - iy
        xx -= cx - ix
        mask = np.zeros(yy.shape, bool)
        inner = np.zeros(yy.shape)  # 1 where a pixel is well inside some lobe
        for k in range(lobes):
            theta = base - spread / 2.0 + k * step
            r = lobe_radius * rng.uniform(0.85, 1.1)
            rho = np.hypot(yy - distance * np.sin(theta), xx - distance * np.cos(theta)) / r
            mask |= rho <= 1.0
            inner = np.maximum(inner, 1.0 - _rim(rho, 0.45))
        return _Shape(iy - half, ix - half, mask, 1.0 - inner)
    # macrophage: large, irregular, with an eccentric darker nucleus
    a = rng.uniform(10.0, 16.0)
    angle = rng.uniform(0.0, np.pi)
    top, left, mask, rho = _radial_shape(
        rng, center, (a, a * rng.uniform(0.65, 0.9)), 0.14, 4, angle
    )
    offset = a * rng.uniform(0.2, 0.35)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    nucleus_center = (
        center[0] + offset * np.sin(direction),
        center[1] + offset * np.cos(direction),
    )
    n_top, n_left, _, n_rho = _radial_shape(
        rng, nucleus_center, (a * 0.42, a * 0.28), 0.05, 3, angle + rng.uniform(-0.5, 0.5)
    )
    nucleus = np.zeros(mask.shape)
    dy, dx = n_top - top, n_left - left
    size = n_rho.shape[0]
    region = nucleus[max(dy, 0) : dy + size, max(dx, 0) : dx + size]
    n_view = n_rho[max(-dy, 0) :, max(-dx, 0) :][: region.shape[0], : region.shape[1]]
    region[:] = np.clip((1.15 - n_view) / 0.3, 0.0, 1.0)
    return _Shape(top, left, mask, np.maximum(nucleus * mask, 0.3 * _rim(rho, 0.2)))


def _clip_to_image(shape: _Shape, height: int, width: int) -> _Shape | None:
    """Cut a shape's crop to the image; None when nothing of it is inside."""
    y0, x0 = max(shape.top, 0), max(shape.left, 0)
    y1 = min(shape.top + shape.mask.shape[0], height)
    x1 = min(shape.left + shape.mask.shape[1], width)
    if y0 >= y1 or x0 >= x1:
        return None
    rows = slice(y0 - shape.top, y1 - shape.top)
    cols = slice(x0 - shape.left, x1 - shape.left)
    return _Shape(y0, x0, shape.mask[rows, cols], shape.detail[rows, cols])


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
        drawn = _draw_shape(self.rng, cls, center)
        full_area = int(drawn.mask.sum())
        shape = _clip_to_image(drawn, self.height, self.width)
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

    def _paint(self, cls: int, shape: _Shape, rows: slice, cols: slice) -> None:
        """Blend the cell's colour into the image with a soft (antialiased) edge."""
        style = _style(cls)
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
):
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
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    _check_num_classes(num_classes)
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
        cls: _cluster_sampler(rng, height, width, *placement[_base_class(cls)])
        for cls in range(1, num_classes + 1)
    }
    probabilities = _CLASS_PROBABILITIES[[_base_class(k) - 1 for k in range(1, num_classes + 1)]]
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


def _check_num_classes(num_classes: int) -> None:
    """Raise ``ValueError`` unless ``num_classes`` is an integer in 1..MAX_CLASSES."""
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


def _validate(num_train: int, num_test: int, seed: int, min_size: int, max_size: int) -> None:
    """Raise ``ValueError`` with a user-facing message for arguments that cannot work."""
    for name, value in (("num_train", num_train), ("num_test", num_test), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if not isinstance(value, (int, np.integer)) or value < MIN_IMAGE_SIZE:
            raise ValueError(f"{name} must be an integer >= {MIN_IMAGE_SIZE}, got {value!r}")
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")


def _prepare_output(output: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier dataset, or remove its parts when ``overwrite`` is set."""
    parts = [output / TRAIN_DIR, output / TEST_DIR, output / TEST_GT_DIR]
    parts.append(output / ID_MAP_NAME)
    existing = [p for p in parts if p.exists()]
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing)
        raise FileExistsError(
            f"{output} already holds a dataset ({names}); choose another folder or overwrite it"
        )
    for path in existing:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _write_masks(folder: Path, labels: dict[int, np.ndarray]) -> None:
    """Write ``classK.tif`` for each present class: float64, uncompressed, like the real data."""
    for cls, label in labels.items():
        write_tiff(folder / class_file_name(cls - 1), label, compression=None)


def generate_synthetic_dataset(
    output: str | os.PathLike,
    num_train: int,
    num_test: int,
    seed: int = 0,
    min_size: int = 256,
    max_size: int = 512,
    *,
    overwrite: bool = False,
    num_classes: int = 4,
) -> dict:
    """Write a synthetic dataset with the real dataset's layout under ``output``.

    Why: gives every test and the demo a realistic, reproducible dataset without shipping or
    downloading real data. The same arguments always give byte-identical files (uuids, sizes and
    pixels come from ``seed``; the TIFFs carry no timestamps).

    Image ``i`` of a split has its own random stream (``SeedSequence(seed, spawn_key=(split,
    i))``), its height and width drawn uniformly from ``[min_size, max_size]``; it is dense when
    ``i % DENSE_EVERY == 0``. Folder and file names are uuid4 strings drawn from
    ``random.Random(seed)``, train first.

    Args:
        output: dataset root; created if needed.
        num_train: number of training images (>= 0).
        num_test: number of test images (>= 0).
        seed: non-negative seed.
        min_size: smallest image side in pixels (>= 32).
        max_size: largest image side in pixels (>= min_size).
        overwrite: remove an earlier dataset's ``train``, ``test_release``, ``test_gt`` and id
            map under ``output`` first, instead of failing.
        num_classes: number of classes N (1..16): masks ``class1.tif``..``classN.tif``; train
            on them with N names in ``DATASETS.CLASS_NAMES``.

    Returns:
        A summary: ``output``, ``seed``, ``images``, ``instances_per_class`` (``{K: count}``),
        ``max_cells_per_image`` and ``dense_images`` over both splits, and the same keys per
        split under ``splits["train"]`` and ``splits["test"]``.

    Raises:
        ValueError: invalid counts, seed, sizes or number of classes.
        FileExistsError: ``output`` already holds a dataset and ``overwrite`` is False.
    """
    _validate(num_train, num_test, seed, min_size, max_size)
    _check_num_classes(num_classes)
    classes = range(1, num_classes + 1)
    output = Path(output)
    _prepare_output(output, overwrite)
    names = random.Random(seed)
    splits: dict[str, dict] = {}
    id_map: list[dict] = []
    for split_index, (split, count) in enumerate((("train", num_train), ("test", num_test))):
        stats = {
            "images": 0,
            "instances_per_class": dict.fromkeys(classes, 0),
            "max_cells_per_image": 0,
            "dense_images": 0,
        }
        for i in range(count):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, i)))
            height = int(rng.integers(min_size, max_size + 1))
            width = int(rng.integers(min_size, max_size + 1))
            dense = i % DENSE_EVERY == 0
            required = list(classes[:2])
            if num_classes > 2:
                required.append(3 + i % (num_classes - 2))  # 3 and 4 in turn for four classes
            rgba, labels = synthesize_image(rng, height, width, dense, required, num_classes)
            name = str(uuid.UUID(int=names.getrandbits(128), version=4))
            if split == "train":
                write_tiff(output / TRAIN_DIR / name / IMAGE_FILE_NAME, rgba, compression="lzw")
                _write_masks(output / TRAIN_DIR / name, labels)
            else:
                write_tiff(output / TEST_DIR / f"{name}.tif", rgba, compression="lzw")
                _write_masks(output / TEST_GT_DIR / name, labels)
                id_map.append(
                    {"file_name": f"{name}.tif", "id": i + 1, "height": height, "width": width}
                )
            cells = 0
            for cls, label in labels.items():
                found = int(np.unique(label).size - 1)
                stats["instances_per_class"][cls] += found
                cells += found
            stats["images"] += 1
            stats["max_cells_per_image"] = max(stats["max_cells_per_image"], cells)
            stats["dense_images"] += int(dense)
            logger.debug(
                "%s/%s: %dx%d, %d cells, dense=%s", split, name, height, width, cells, dense
            )
        splits[split] = stats
        logger.info(
            "%s: %d images, instances per class %s, at most %d cells in an image",
            split,
            stats["images"],
            stats["instances_per_class"],
            stats["max_cells_per_image"],
        )
    (output / TRAIN_DIR).mkdir(parents=True, exist_ok=True)
    (output / TEST_DIR).mkdir(parents=True, exist_ok=True)
    (output / TEST_GT_DIR).mkdir(parents=True, exist_ok=True)
    with atomic_write(output / ID_MAP_NAME, "w") as handle:
        json.dump(id_map, handle, indent=2)
        handle.write("\n")
    return {
        "output": str(output),
        "seed": seed,
        "images": sum(s["images"] for s in splits.values()),
        "instances_per_class": {
            cls: sum(s["instances_per_class"][cls] for s in splits.values()) for cls in classes
        },
        "max_cells_per_image": max(s["max_cells_per_image"] for s in splits.values()),
        "dense_images": sum(s["dense_images"] for s in splits.values()),
        "splits": splits,
    }
