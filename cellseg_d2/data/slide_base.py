"""What every slide reader shares: :class:`SlideInfo` and the :class:`SlideReader` base.

The readers themselves live in :mod:`cellseg_d2.data.slide` (OpenSlide) and
:mod:`cellseg_d2.data.slide_tiff` (tifffile pyramids, whole images in memory); import the names
from :mod:`cellseg_d2.data.slide`, which re-exports these. One base class keeps the parts that do
not depend on the file format (level choice, thumbnails, argument checks, white padding) in one
place, so every format answers the same questions the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cellseg_d2.utils.closing import Closing

__all__ = [
    "LEVEL_TOLERANCE",
    "SlideInfo",
    "SlideReader",
    "level_position",
    "paste_window",
    "rgba_on_white",
]

#: A pyramid level counts as "no coarser than asked" up to this relative excess of its
#: downsample: scanners store 2.0005 or 4.0161 where they mean 2 and 4 (``boxes.tiff``, TCGA).
LEVEL_TOLERANCE = 0.01
#: Longest side, in pixels of the level read, of one read made for a thumbnail: slides without
#: a coarse level are thumbnailed piece by piece instead of being decoded whole.
_THUMBNAIL_READ = 4096


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is: size, pyramid, pixel size and where its pixels sit in the slide's frame.

    Attributes:
        path: the file.
        width, height: level-0 size in pixels (the bounds for formats that declare them).
        level_dimensions: ``(width, height)`` of each level, finest first.
        level_downsamples: level-0 pixels per pixel of each level (1.0 first).
        pixel_size_um: µm per level-0 pixel along x as the metadata state it, None when they
            state none. Not checked here: :func:`~cellseg_d2.data.slide.resolve_pixel_size`
            decides whether it can be used.
        offset: ``(x, y)`` of this image's level-0 origin in the slide's own frame
            (``openslide.bounds-x``/``-y``, else ``(0, 0)``). ``read_region`` coordinates do
            not include it; add it to get OpenSlide's full-slide coordinates.
            NOTE: QuPath's OpenSlide server crops to the same bounds by default, so QuPath's
            coordinates are the ones *without* the offset.
        reader: ``"openslide"``, ``"tifffile"`` (tiled TIFF/OME-TIFF pyramids) or ``"image"``
            (a whole image decoded into memory: PNG, JPEG, small plain TIFF).
        pixel_size_y_um: µm per level-0 pixel along y when the metadata state it separately.
        objective_power: the scanner's objective magnification, when stated (a hint only).
        vendor: the format as the reader names it (``"aperio"``, ``"dicom"``, ``"ome-tiff"``...).
    """

    path: Path
    width: int
    height: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    pixel_size_um: float | None
    offset: tuple[int, int]
    reader: str
    pixel_size_y_um: float | None = None
    objective_power: float | None = None
    vendor: str = ""

    @property
    def level_count(self) -> int:
        """Number of pyramid levels (1 for a flat image)."""
        return len(self.level_dimensions)


def rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (not premultiplied) RGBA uint8 pixels over white, giving RGB uint8.

    Why: OpenSlide marks pixels outside the scanned area as transparent; over white they look
    like empty glass, which is what tissue detection and the model expect.
    """
    rgb = rgba[:, :, :3]
    alpha = rgba[:, :, 3:4]
    if alpha.size == 0 or int(alpha.min()) == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class SlideReader(Closing):
    """A slide opened for reading regions; use :func:`~cellseg_d2.data.slide.open_slide`.

    Use it as a context manager (or call :meth:`close`). Subclasses implement
    :meth:`_read_level` (a region inside one level) and :meth:`close`; the rest is shared.
    Reads from several threads are safe for the readers this package ships.
    """

    def __init__(self, info: SlideInfo) -> None:
        self.info = info

    def close(self) -> None:
        """Release the file (idempotent)."""

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Pixels of a rectangle as an RGB uint8 ``(height, width, 3)`` array.

        Why this signature: it is OpenSlide's (level-0 corner, size in the level's pixels), the
        convention every whole-slide tool shares, so tile plans carry over unchanged.

        Args:
            x, y: top-left corner in level-0 pixels, without :attr:`SlideInfo.offset`.
            level: pyramid level, 0 = finest.
            width, height: size in pixels of ``level``.

        Returns:
            The pixels; parts outside the image are white (255).

        Raises:
            ValueError: a level that does not exist or a size below 1 pixel.
            CellDataError: the file cannot be decoded there (names the file).
        """
        if not 0 <= level < self.info.level_count:
            count = self.info.level_count
            raise ValueError(f"level {level} does not exist (the slide has {count})")
        if width < 1 or height < 1:
            raise ValueError(f"region size {width}x{height}: both sides must be >= 1 pixel")
        return self._read_level(int(x), int(y), int(level), int(width), int(height))

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample``.

        Why: reading there and resizing down the rest of the way never discards detail the
        model needs, while decoding as few pixels as possible. A level up to
        :data:`LEVEL_TOLERANCE` coarser still counts (stored downsamples such as 2.0005 mean 2).
        A request below 1 (the model wants the image enlarged) gives level 0.
        """
        best, best_downsample = 0, self.info.level_downsamples[0]
        for level, level_downsample in enumerate(self.info.level_downsamples):
            fits = level_downsample <= downsample * (1.0 + LEVEL_TOLERANCE)
            if fits and level_downsample > best_downsample:
                best, best_downsample = level, level_downsample
        return best

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """The whole slide small enough for tissue detection and figures.

        Why piecewise: a slide without a coarse level would otherwise be decoded whole; here
        each read is at most a few thousand pixels a side of the best level, shrunk with area
        averaging (``cv2.INTER_AREA``). Never enlarges an image smaller than ``max_size``.

        Args:
            max_size: the longest side of the result, in pixels (>= 1).

        Returns:
            ``(image, downsample)``: RGB uint8 whose longer side is at most ``max_size``, and
            level-0 pixels per thumbnail pixel along the longer side.
        """
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        width, height = self.info.width, self.info.height
        longer = max(width, height)
        downsample = max(1.0, longer / max_size)
        out_w = max(1, min(max_size, round(width / downsample)))
        out_h = max(1, min(max_size, round(height / downsample)))
        scale_x, scale_y = width / out_w, height / out_h
        level = self.best_level_for_downsample(min(scale_x, scale_y))
        level_downsample = self.info.level_downsamples[level]
        block = max(1, int(_THUMBNAIL_READ * level_downsample / max(scale_x, scale_y)))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for top in range(0, out_h, block):
            bottom = min(out_h, top + block)
            y0, y1 = round(top * scale_y), round(bottom * scale_y)
            for left in range(0, out_w, block):
                right = min(out_w, left + block)
                x0, x1 = round(left * scale_x), round(right * scale_x)
                region = self.read_region(
                    x0,
                    y0,
                    level,
                    max(1, round((x1 - x0) / level_downsample)),
                    max(1, round((y1 - y0) / level_downsample)),
                )
                out[top:bottom, left:right] = _resize(region, right - left, bottom - top)
        return out, longer / max(out_w, out_h)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` at ``width`` x ``height``: area averaging to shrink, bilinear to enlarge."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrink = image.shape[1] >= width and image.shape[0] >= height
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def paste_window(
    out: np.ndarray, origin: tuple[int, int], tile: np.ndarray, tile_origin: tuple[int, int]
) -> None:
    """Copy the part of ``tile`` (placed at ``tile_origin``) that overlaps ``out`` (placed at
    ``origin``) into ``out``; both origins in the same level's pixels, as ``(x, y)``."""
    ox, oy = origin
    tx, ty = tile_origin
    x0, y0 = max(ox, tx), max(oy, ty)
    x1 = min(ox + out.shape[1], tx + tile.shape[1])
    y1 = min(oy + out.shape[0], ty + tile.shape[0])
    if x0 < x1 and y0 < y1:
        out[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = tile[y0 - ty : y1 - ty, x0 - tx : x1 - tx]


def level_position(x: int, downsample: float) -> int:
    """The pixel of a level that holds level-0 coordinate ``x`` (floor of ``x / downsample``)."""
    return math.floor(x / downsample + 1e-9)
