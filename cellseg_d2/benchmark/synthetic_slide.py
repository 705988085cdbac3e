"""The synthetic whole slide of the slide benchmark, and the fake model's eyes for its cells.

The slide: white glass around a pink tissue rectangle, on which dark discs (cells) sit on a
regular grid, purple (class 0) and brown (class 1) in a checkerboard. Every pixel is a pure
function of its position, so any process can open the same slide from its name
(``synthetic-40000x40000.slide``) and the expected cells are known exactly. It is generated
region by region, never held whole, like a real slide read through a slide library.

:func:`find_discs` finds the discs in a tile's pixels, as a model would, so discs cut by a
tile's edge come out cut and the stitching is tested for real
(:mod:`~cellseg_d2.benchmark.slides` times the loop with it).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import cv2
import numpy as np

from cellseg_d2.data.slide_base import SlideInfo, SlideReader, level_position
from cellseg_d2.inference.detections import Detection

__all__ = [
    "DISC_PITCH",
    "DISC_RADIUS",
    "DISC_RGB",
    "MIN_DISC_PITCH",
    "SLIDE_LEVELS",
    "SyntheticSlide",
    "find_discs",
    "open_synthetic_slide",
    "synthetic_slide_name",
]

#: Default level-0 pixels between neighbouring disc centres (256 cells per 1024² of tissue).
DISC_PITCH = 64
#: Disc radius in level-0 pixels (21 px wide: well inside a 128 px tile overlap).
DISC_RADIUS = 10
#: The closest disc pitch: neighbouring discs stay apart (4 px of tissue between them).
MIN_DISC_PITCH = 2 * DISC_RADIUS + 4
#: Downsamples of the generated pyramid; the coarse ones serve the tissue thumbnail.
SLIDE_LEVELS = (1, 4, 16, 64)
#: RGB of glass, tissue, and the discs of class 0 and 1.
GLASS_RGB, TISSUE_RGB = (255, 255, 255), (230, 180, 205)
DISC_RGB = ((70, 40, 120), (130, 70, 40))
#: Darkest channel below which a pixel is a disc (tissue's darkest is 180, discs' 40).
_DISC_THRESHOLD = 110
#: µm per level-0 pixel the slide states (a 20x scan).
_PIXEL_SIZE_UM = 0.5
_NAME = re.compile(r"synthetic-(\d+)x(\d+)(?:-p(\d+))?\.slide")


def synthetic_slide_name(width: int, height: int, pitch: int = DISC_PITCH) -> str:
    """The file name :func:`open_synthetic_slide` understands for a slide of this size (and
    disc pitch, named only when it is not :data:`DISC_PITCH`)."""
    suffix = "" if pitch == DISC_PITCH else f"-p{pitch}"
    return f"synthetic-{width}x{height}{suffix}.slide"


def _disc_range(size: int, margin: int, pitch: int) -> tuple[int, int]:
    """``(first grid index, count)`` of the discs wholly inside the tissue along one axis;
    disc ``k`` is centred on level-0 pixel ``k * pitch + pitch // 2``."""
    half = pitch // 2
    first = max(0, math.ceil((margin + DISC_RADIUS - half) / pitch))
    last = math.floor((size - margin - 1 - DISC_RADIUS - half) / pitch)
    return first, max(0, last - first + 1)


class SyntheticSlide(SlideReader):
    """A slide of ``width`` x ``height`` pixels drawn on demand, region by region.

    Tissue covers ``[margin, size - margin)`` on both axes, with ``margin`` a sixteenth of the
    shorter side rounded down to whole disc pitches (at least one); discs ``pitch`` pixels
    apart (even, at least :data:`MIN_DISC_PITCH`) lie wholly inside it.
    A pixel of a coarse level shows the level-0 pixel at its centre (no averaging: the coarse
    levels only feed the tissue thumbnail).
    """

    def __init__(
        self,
        width: int,
        height: int,
        pitch: int = DISC_PITCH,
        path: str | os.PathLike | None = None,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"slide size {width}x{height}: both sides must be >= 1 pixel")
        if pitch % 2 or pitch < MIN_DISC_PITCH:
            raise ValueError(f"disc pitch {pitch}: must be even and >= {MIN_DISC_PITCH}")
        levels = tuple(d for d in SLIDE_LEVELS if d == 1 or min(width, height) // d >= 1)
        super().__init__(
            SlideInfo(
                path=Path(path or synthetic_slide_name(width, height, pitch)),
                width=width,
                height=height,
                level_dimensions=tuple((width // d, height // d) for d in levels),
                level_downsamples=tuple(float(d) for d in levels),
                pixel_size_um=_PIXEL_SIZE_UM,
                offset=(0, 0),
                reader="synthetic",
                vendor="synthetic",
            )
        )
        self.pitch = pitch
        self.margin = pitch * max(1, min(width, height) // (16 * pitch))
        self.discs_x = _disc_range(width, self.margin, pitch)
        self.discs_y = _disc_range(height, self.margin, pitch)

    @property
    def disc_counts(self) -> tuple[int, int]:
        """``(class 0, class 1)`` discs on the slide: the cells a perfect model finds."""
        (fx, nx), (fy, ny) = self.discs_x, self.discs_y
        kx, ky = np.arange(fx, fx + nx), np.arange(fy, fy + ny)
        odd = int(((kx[None, :] + ky[:, None]) % 2).sum())
        return nx * ny - odd, odd

    def _axis(
        self, start: int, count: int, downsample: float, size: int, discs: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Along one axis: inside the tissue, grid index, offset from the disc centre, and
        whether that grid index holds a disc, for ``count`` level pixels from ``start``."""
        u = (start + np.arange(count)) * downsample + (downsample - 1) / 2
        tissue = (u >= self.margin) & (u < size - self.margin)
        k = np.floor(u / self.pitch).astype(np.int64)
        offset = u - (k * self.pitch + self.pitch // 2)
        has_disc = (k >= discs[0]) & (k < discs[0] + discs[1])
        return tissue, k, offset, has_disc

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """The region's pixels, drawn from what each row and column is (see :meth:`_axis`).

        Why a table: a pixel's colour depends only on its row's and its column's (tissue, grid
        parity, offset from the disc centre, disc or not), which take few distinct values (at
        most two disc pitches' worth). So the colours of those few rows by those few columns
        are drawn with the formulas, and the region is gathered from that small table: ~20x
        faster than the formulas over every pixel, which matters because the benchmark's
        reading workers draw every tile and a real slide reader only decodes it.
        """
        downsample = self.info.level_downsamples[level]
        lx, ly = level_position(x, downsample), level_position(y, downsample)
        row_kinds, rows = _distinct(
            self._axis(ly, height, downsample, self.info.height, self.discs_y)
        )
        col_kinds, cols = _distinct(
            self._axis(lx, width, downsample, self.info.width, self.discs_x)
        )
        ty, py, oy, dy = row_kinds
        tx, px, ox, dx = col_kinds
        table = np.empty((len(ty), len(tx), 3), np.uint8)
        table[:] = GLASS_RGB
        table[ty[:, None] & tx[None, :]] = TISSUE_RGB
        disc = (oy[:, None] ** 2 + ox[None, :] ** 2 <= DISC_RADIUS**2) & dy[:, None] & dx[None, :]
        odd = ((py[:, None] + px[None, :]) % 2).astype(bool)
        table[disc & ~odd] = DISC_RGB[0]
        table[disc & odd] = DISC_RGB[1]
        return np.ascontiguousarray(table[rows][:, cols])


def _distinct(
    axis: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """The distinct kinds of position along one axis and which kind each position is.

    Args:
        axis: per position: in the tissue, grid index, offset from the disc centre, has a disc
            (:meth:`SyntheticSlide._axis`); only the grid index's parity matters for colour.

    Returns:
        ``((tissue, parity, offset, has_disc) per distinct kind, kind of each position)``.
    """
    tissue, k, offset, has_disc = axis
    keys = np.stack([tissue, k % 2, offset, has_disc], axis=1).astype(np.float64)
    kinds, index = np.unique(keys, axis=0, return_inverse=True)
    kind = (
        kinds[:, 0].astype(bool),
        kinds[:, 1].astype(np.int64),
        kinds[:, 2],
        kinds[:, 3].astype(bool),
    )
    return kind, index.reshape(-1)


def open_synthetic_slide(path: str | os.PathLike) -> SyntheticSlide:
    """Open a synthetic slide by name (``.../synthetic-<W>x<H>.slide``, or
    ``synthetic-<W>x<H>-p<pitch>.slide``; no file is read). Module-level, so DataLoader
    workers can unpickle it and open their own.

    Raises:
        ValueError: the name is not of that form.
    """
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a synthetic slide name (synthetic-<W>x<H>[-p<P>].slide)")
    pitch = int(match[3]) if match[3] else DISC_PITCH
    return SyntheticSlide(int(match[1]), int(match[2]), pitch, path)


def find_discs(image: np.ndarray) -> list[Detection]:
    """The discs of a BGR tile as detections: dark connected blobs, class by hue.

    Why thresholding instead of fixed positions: the predictor gets pixels only, as a model
    does, and discs cut by the tile's edge come out cut, which the stitching must handle.
    """
    # "some channel below the threshold" = not "every channel at or above it"; OpenCV's range
    # test is ~20x faster than NumPy's min over the 3-wide last axis, and a stand-in for a model
    # on a GPU must leave the CPU to the reading and cell workers it is measuring.
    light = _DISC_THRESHOLD, _DISC_THRESHOLD, _DISC_THRESHOLD
    dark = cv2.bitwise_not(cv2.inRange(image, light, (255, 255, 255)))
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=4)
    detections = []
    for label in range(1, count):
        left, top, width, height = (int(v) for v in stats[label, :4])
        mask = labels[top : top + height, left : left + width] == label
        cx, cy = (int(v) for v in centroids[label])
        blue, _, red = (int(v) for v in image[cy, cx])
        detections.append(Detection(int(red > blue), 0.9, top, left, mask))
    return detections
