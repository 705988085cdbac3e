"""How each synthetic cell class looks: its outline (drawn on a local crop) and its stain.

The classes mimic haematoxylin & eosin stained tissue (:data:`CLASS_NAMES`):

1. epithelial: ~45% of cells, large (radius 8-14 px) elongated polygonal nuclei, purple-pink
   with mottled chromatin; they grow in clusters.
2. lymphocyte: ~45%, small (radius 4-7 px) round, dark blue-purple and nearly uniform.
3. neutrophil: ~5%, medium (radius 6-9 px), 2-4 overlapping lobes forming one cell,
   dark violet with darker lobe outlines.
4. macrophage: ~5%, large (radius 10-16 px) irregular, pale brownish with an eccentric darker
   nucleus.

Class K above 4 looks like class ``(K - 1) % 4 + 1`` with its colour channels rotated once per
cycle of four (:func:`class_style`), so classes 5 and 1 differ in colour.

NOTE: every function draws from the generator it is given in a fixed order; changing that order
changes every generated dataset (the tests pin byte-identical output per seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES

__all__ = [
    "CLASS_NAMES",
    "Shape",
    "Style",
    "base_class",
    "class_style",
    "clip_to_image",
    "draw_shape",
]

#: Class ids (as in ``classK.tif``) and what they imitate; classes above 4 repeat these looks.
CLASS_NAMES: dict[int, str] = dict(enumerate(DEFAULT_CLASS_NAMES, start=1))


@dataclass(frozen=True)
class Style:
    """How a class is painted: RGB base colour, texture strength and outline/detail shading."""

    color: tuple[float, float, float]
    texture: float  # amplitude of the fine mottling, in grey levels
    detail: tuple[float, float, float]  # RGB drop where the shape's detail map is 1
    speckle: float  # darkening of chromatin speckles, in grey levels


_STYLES: dict[int, Style] = {
    1: Style(color=(160, 86, 170), texture=24.0, detail=(40, 38, 30), speckle=38.0),
    2: Style(color=(56, 36, 112), texture=7.0, detail=(14, 10, 18), speckle=0.0),
    3: Style(color=(104, 30, 134), texture=9.0, detail=(50, 22, 50), speckle=0.0),
    4: Style(color=(200, 160, 126), texture=12.0, detail=(70, 78, 40), speckle=0.0),
}


@dataclass
class Shape:
    """A cell drawn on a local crop whose top-left pixel sits at ``(top, left)`` in the image."""

    top: int
    left: int
    mask: np.ndarray  # bool crop
    detail: np.ndarray  # float crop in [0, 1]: outlines, lobe borders, nucleus


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


def base_class(cls: int) -> int:
    """The class 1..4 whose shape, colour and frequency class ``cls`` (1..N) repeats.

    Why: any number of classes reuses the four hand-made looks instead of inventing new ones.
    """
    return (cls - 1) % len(CLASS_NAMES) + 1


def class_style(cls: int) -> Style:
    """The style of class ``cls``: its base class's, colours rotated once per cycle of four.

    Why: classes that share a shape must still be told apart, by colour.
    """
    style = _STYLES[base_class(cls)]
    shift = (cls - 1) // len(CLASS_NAMES)
    if shift == 0:
        return style
    color = tuple(np.roll(style.color, shift).tolist())
    detail = tuple(np.roll(style.detail, shift).tolist())
    return Style(color=color, texture=style.texture, detail=detail, speckle=style.speckle)


def _epithelial(rng: np.random.Generator, center: tuple[float, float]) -> Shape:
    """Large, elongated, polygonal."""
    a = rng.uniform(8.0, 14.0)
    top, left, mask, rho = _radial_shape(rng, center, (a, a * rng.uniform(0.5, 0.8)), 0.07, 5)
    return Shape(top, left, mask, _rim(rho))


def _lymphocyte(rng: np.random.Generator, center: tuple[float, float]) -> Shape:
    """Small, round."""
    r = rng.uniform(4.0, 7.0)
    top, left, mask, rho = _radial_shape(rng, center, (r, r * rng.uniform(0.85, 1.0)), 0.02)
    return Shape(top, left, mask, _rim(rho, 0.3))


def _neutrophil(rng: np.random.Generator, center: tuple[float, float]) -> Shape:
    """2-4 overlapping lobes on an arc."""
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
    return Shape(iy - half, ix - half, mask, 1.0 - inner)


def _macrophage(rng: np.random.Generator, center: tuple[float, float]) -> Shape:
    """Large, irregular, with an eccentric darker nucleus."""
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
    return Shape(top, left, mask, np.maximum(nucleus * mask, 0.3 * _rim(rho, 0.2)))


_DRAWERS = {1: _epithelial, 2: _lymphocyte, 3: _neutrophil, 4: _macrophage}


def draw_shape(rng: np.random.Generator, cls: int, center: tuple[float, float]) -> Shape:
    """Draw one cell of class ``cls`` centred near ``center`` (local crop, not yet clipped).

    Why a local crop: a cell covers a few hundred pixels, so drawing it on the whole image would
    cost (cells x image area).
    """
    return _DRAWERS[base_class(cls)](rng, center)


def clip_to_image(shape: Shape, height: int, width: int) -> Shape | None:
    """Cut a shape's crop to the image; None when nothing of it is inside.

    Why: cells near the border are drawn whole and then cut, like real tiles cut real tissue.
    """
    y0, x0 = max(shape.top, 0), max(shape.left, 0)
    y1 = min(shape.top + shape.mask.shape[0], height)
    x1 = min(shape.left + shape.mask.shape[1], width)
    if y0 >= y1 or x0 >= x1:
        return None
    rows = slice(y0 - shape.top, y1 - shape.top)
    cols = slice(x0 - shape.left, x1 - shape.left)
    return Shape(y0, x0, shape.mask[rows, cols], shape.detail[rows, cols])
