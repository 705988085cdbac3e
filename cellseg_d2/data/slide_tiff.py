"""Slides OpenSlide does not read: OME-TIFF pyramids (tifffile) and flat images (in memory).

Why tifffile for OME-TIFF: OpenSlide does not read OME pyramids (their levels are SubIFDs, which
its generic TIFF driver does not follow), while tifffile is the reference reader for them (it is
what QuPath's and Bio-Formats' exports are tested against) and is already the project's TIFF
reader. Only the tiles a region touches are decoded, so a pyramid of any size is read in pieces.

Why a whole-image reader: PNG, JPEG and plain strip TIFFs have no tiles or levels worth the
name; the project's own reader (:func:`cellseg_d2.data.io.read_image`, with its size cap, RGBA,
16-bit and LZW rules) decodes them once and regions are slices of that array.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from cellseg_d2.data.importers.metadata import pixel_size_of
from cellseg_d2.data.io import max_image_pixels, read_any_image, read_image, to_bgr_image
from cellseg_d2.data.slide_base import (
    SlideInfo,
    SlideReader,
    level_position,
    paste_window,
    rgba_on_white,
)
from cellseg_d2.errors import CellDataError

__all__ = [
    "ImageReader",
    "TiffLayout",
    "TiffPyramidReader",
    "open_tiff_or_image",
    "tiff_layout",
    "tiff_pixel_size",
]

logger = logging.getLogger(__name__)

_TIFF_SUFFIXES = (".tif", ".tiff")
#: Photometric interpretations read as RGB or grey: MINISBLACK, RGB, YCbCr (JPEG tiles).
_PHOTOMETRIC_OK = {1, 2, 6}
_MICROMETRES_PER_INCH = 25400.0
_RESUNIT_INCH = 2


def tiff_pixel_size(path: Path) -> float | None:
    """The µm/px a TIFF declares along x, None when none.

    Why both units: after OME-XML, ImageJ and centimetre tags (the importers' rules, see
    :func:`~cellseg_d2.data.importers.metadata.pixel_size_of`), a slide may state its resolution
    in pixels per inch. A 72 or 96 dpi default then gives 352.8 or 264.6 µm/px, which
    :func:`~cellseg_d2.data.slide.resolve_pixel_size` refuses by name instead of using.
    """
    size = pixel_size_of(path)
    if size is not None:
        return size
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            if int(page.resolutionunit) != _RESUNIT_INCH:
                return None
            per_inch = float(page.resolution[0])
    except Exception as exc:  # metadata is optional: an unreadable tag means none
        logger.debug("%s: no resolution read (%s)", path, exc)
        return None
    return _MICROMETRES_PER_INCH / per_inch if math.isfinite(per_inch) and per_inch > 0 else None


def needs_tifffile(path: Path) -> bool:
    """Whether a TIFF is a pyramid OpenSlide would misread: OME-TIFF, or levels in SubIFDs.

    Only the header is read; a file tifffile cannot parse answers False (OpenSlide decides).
    """
    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome or tif.pages.first.subifds)
    except Exception:  # not for us to judge: the OpenSlide path reports the problem
        return False


class TiffPyramidReader(SlideReader):
    """A tiled (or striped) TIFF read with tifffile, level by level, tile by tile.

    Levels come from the first series' pyramid (OME SubIFDs, or tifffile's other pyramid
    layouts); pages must be 2-D, uint8, grey, RGB or RGBA with samples stored together, which
    covers brightfield scans. Other layouts (fluorescence channel planes, 16-bit) are refused
    with a message, since there is no one right way to turn them into RGB.
    """

    def __init__(self, path: Path) -> None:
        self._tif: tifffile.TiffFile | None = None
        try:
            self._tif = tifffile.TiffFile(path)
            self._tif.filehandle.set_lock(True)
            levels = self._tif.series[0].levels
            self._pages = [level.keyframe for level in levels]
            for level, page in zip(levels, self._pages):
                _check_page(path, level, page)
            is_ome = self._tif.is_ome
        except CellDataError:
            self.close()
            raise
        except Exception as exc:  # tifffile raises many types for corrupt input
            self.close()
            raise CellDataError(f"{path}: unreadable TIFF: {exc}") from exc
        dims = tuple((int(p.imagewidth), int(p.imagelength)) for p in self._pages)
        width, height = dims[0]
        downsamples = tuple((width / w + height / h) / 2.0 for w, h in dims)
        super().__init__(
            SlideInfo(
                path=path,
                width=width,
                height=height,
                level_dimensions=dims,
                level_downsamples=downsamples,
                pixel_size_um=tiff_pixel_size(path),
                offset=(0, 0),
                reader="tifffile",
                vendor="ome-tiff" if is_ome else "tiff",
            )
        )

    def close(self) -> None:
        """Close the TIFF file (idempotent)."""
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        if self._tif is None:
            raise CellDataError(f"{self.info.path}: the slide is closed")
        page = self._pages[level]
        downsample = self.info.level_downsamples[level]
        left, top = level_position(x, downsample), level_position(y, downsample)
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, page.imagewidth), min(top + height, page.imagelength)
        if x0 >= x1 or y0 >= y1:
            return out
        tile_h, tile_w = page.chunks[0], page.chunks[1]
        across = page.chunked[1]
        indices = [
            row * across + col
            for row in range(y0 // tile_h, (y1 - 1) // tile_h + 1)
            for col in range(x0 // tile_w, (x1 - 1) // tile_w + 1)
        ]
        decode_args: dict = {"_fullsize": True}
        if page.jpegtables is not None:
            decode_args["jpegtables"] = page.jpegtables
        if page.jpegheader is not None:
            decode_args["jpegheader"] = page.jpegheader
        try:
            segments = self._tif.filehandle.read_segments(
                [page.dataoffsets[i] for i in indices],
                [page.databytecounts[i] for i in indices],
                indices=indices,
                lock=self._tif.filehandle.lock,
            )
            for data, index in segments:
                segment = page.decode(data, index, **decode_args)[0]
                if segment is None:  # a tile the file leaves out: empty glass
                    continue
                row, col = divmod(index, across)
                tile_x, tile_y = col * tile_w, row * tile_h
                # edge tiles are padded to full size: keep only what lies inside the image
                inside = segment[0, : page.imagelength - tile_y, : page.imagewidth - tile_x]
                paste_window(out, (left, top), _as_rgb(inside), (tile_x, tile_y))
        except Exception as exc:  # tifffile and the codecs raise many types
            raise CellDataError(
                f"{self.info.path}: cannot decode level {level} at x={x} y={y}: {exc}"
            ) from exc
        return out


def _check_page(path: Path, level: tifffile.TiffPageSeries, page: tifffile.TiffPage) -> None:
    """Refuse a level :class:`TiffPyramidReader` cannot turn into RGB, saying why."""
    samples = int(page.samplesperpixel)
    problem = ""
    if len(level.pages) > 1 or page.imagedepth > 1:
        problem = f"{len(level.pages)} planes per level (axes {level.axes})"
    elif page.dtype != np.uint8:
        problem = f"{page.dtype} pixels"
    elif samples not in (1, 3, 4):
        problem = f"{samples} samples per pixel"
    elif samples > 1 and page.planarconfig != 1:
        problem = f"{samples} samples per pixel stored as separate planes"
    elif int(page.photometric) not in _PHOTOMETRIC_OK:
        problem = f"photometric interpretation {page.photometric.name}"
    if problem:
        raise CellDataError(
            f"{path}: {problem}; the slide reader takes 8-bit grey, RGB or RGBA pyramids "
            "(convert fluorescence or 16-bit images to RGB first)"
        )


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """A decoded tile (H, W, S) with S = 1, 3 or 4 -> RGB uint8 (alpha over white)."""
    if pixels.ndim == 2 or pixels.shape[2] == 1:
        return np.repeat(pixels.reshape(pixels.shape[0], pixels.shape[1], 1), 3, axis=2)
    if pixels.shape[2] == 4:
        return rgba_on_white(pixels)
    return pixels


class ImageReader(SlideReader):
    """A flat image (PNG, JPEG, small plain TIFF) decoded once into memory: one level.

    The pixels follow the project's reader rules (:func:`~cellseg_d2.data.io.to_bgr_image`),
    so a PNG predicted as a slide gives the same pixels as the same PNG imported for training.
    """

    def __init__(self, path: Path) -> None:
        is_tiff = path.suffix.lower() in _TIFF_SUFFIXES
        bgr = read_image(path) if is_tiff else to_bgr_image(read_any_image(path), path)
        self._rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        height, width = self._rgb.shape[:2]
        super().__init__(
            SlideInfo(
                path=path,
                width=width,
                height=height,
                level_dimensions=((width, height),),
                level_downsamples=(1.0,),
                pixel_size_um=tiff_pixel_size(path) if is_tiff else None,
                offset=(0, 0),
                reader="image",
                vendor=path.suffix.lower().lstrip("."),
            )
        )

    def close(self) -> None:
        """Nothing to release: the pixels are in memory."""

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, np.uint8)
        paste_window(out, (x, y), self._rgb, (0, 0))
        return out


def open_tiff_or_image(path: Path) -> SlideReader:
    """Open a file OpenSlide did not: tiled or large TIFFs tile by tile, the rest in memory.

    Why the split: a tiled TIFF or one above :func:`~cellseg_d2.data.io.max_image_pixels` is
    meant to be read in pieces; anything smaller goes through the project's own image reader.

    Raises:
        CellDataError: the file cannot be read as either (names the file and the problem).
    """
    if path.suffix.lower() in _TIFF_SUFFIXES:
        layout = tiff_layout(path)
        if layout.tiled or layout.levels > 1 or layout.over_cap:
            return TiffPyramidReader(path)
    return ImageReader(path)


@dataclass(frozen=True)
class TiffLayout:
    """What a TIFF's header says about how to read it.

    Attributes:
        tiled: the first page is stored in tiles.
        levels: pyramid levels of the first series.
        over_cap: more pixels than :func:`~cellseg_d2.data.io.max_image_pixels` allows whole.
    """

    tiled: bool
    levels: int
    over_cap: bool


def tiff_layout(path: str | os.PathLike) -> TiffLayout:
    """Read a TIFF's :class:`TiffLayout` from its header (no pixels decoded).

    Why one reader: opening a slide and sorting prediction inputs both decide "read whole or
    piece by piece" from these three facts.

    Raises:
        CellDataError: the header cannot be read.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            pixels = int(page.imagewidth) * int(page.imagelength)
            tiled = bool(page.is_tiled)
            levels = len(tif.series[0].levels) if tif.series else 1
    except Exception as exc:  # tifffile raises many types for corrupt input
        raise CellDataError(f"{path}: unreadable TIFF: {exc}") from exc
    limit = max_image_pixels()
    return TiffLayout(tiled, levels, bool(limit and pixels > limit))


def is_tiff_name(path: str | os.PathLike) -> bool:
    """Whether a file name ends in .tif or .tiff (any case)."""
    return Path(path).suffix.lower() in _TIFF_SUFFIXES
