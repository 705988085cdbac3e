"""Open what people scan: whole slides, OME-TIFF pyramids and plain images, at a known pixel size.

:func:`open_slide` picks the reader; every reader answers the same questions
(:class:`SlideInfo`, :meth:`SlideReader.read_region`, :meth:`SlideReader.thumbnail`,
:meth:`SlideReader.best_level_for_downsample`), so the tiling and prediction code above never
asks which format it has. :func:`resolve_pixel_size` decides the µm/px a slide is read at: the
user's ``--pixel-size`` first, else the metadata, and never a guess.

Readers, in the order :func:`open_slide` tries them:

1. **tifffile** for OME-TIFF and TIFFs whose levels are SubIFDs: OpenSlide does not read OME
   pyramids (see :mod:`cellseg_d2.data.slide_tiff`).
2. **OpenSlide** (``openslide-python`` with the ``openslide-bin`` library) for everything it
   recognises: Aperio SVS, Hamamatsu NDPI/VMS/VMU, MIRAX, Leica SCN, Ventana BIF, Sakura,
   DICOM WSI and generic tiled TIFF. It is the field's standard reader (QuPath, TIAToolbox,
   histolab, CLAM all use it), knows each vendor's quirks and states a slide's bounds and pixel
   size in one vocabulary (``openslide.mpp-x``, ``openslide.bounds-x``).
3. **tifffile / the project's image reader** for TIFFs OpenSlide refuses (strips, codecs it
   lacks) and for PNG/JPEG.

Every failure to open or read becomes :class:`~cellseg_d2.errors.CellDataError` naming the file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import openslide

from cellseg_d2.data.slide_base import SlideInfo, SlideReader, rgba_on_white
from cellseg_d2.data.slide_tiff import (
    TiffPyramidReader,
    is_tiff_name,
    needs_tifffile,
    open_tiff_or_image,
)
from cellseg_d2.errors import CellDataError

__all__ = [
    "IMAGE_SUFFIXES",
    "PLAUSIBLE_PIXEL_SIZE_UM",
    "SLIDE_SUFFIXES",
    "OpenSlideReader",
    "SlideInfo",
    "SlideReader",
    "is_slide_file",
    "open_slide",
    "resolve_pixel_size",
]

logger = logging.getLogger(__name__)

#: µm/px a microscope image can have: 0.1 (100x oil) to 2.0 (a 5x scan). Outside it, metadata
#: are an artefact (72 dpi -> 352.8 µm/px) and a user's value a typo (mm or nm for µm).
PLAUSIBLE_PIXEL_SIZE_UM: tuple[float, float] = (0.1, 2.0)
#: Whole-slide and pyramid formats (by file name ending, lower case).
SLIDE_SUFFIXES: frozenset[str] = frozenset(
    {
        ".svs",
        ".ndpi",
        ".mrxs",
        ".scn",
        ".vms",
        ".vmu",
        ".bif",
        ".svslide",
        ".dcm",
        ".tif",
        ".tiff",
        ".ome.tif",
        ".ome.tiff",
    }
)
#: Flat image formats read whole into memory (TIFF may be either).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
#: mpp-x and mpp-y further apart than this (relative) are refused: the model scales isotropically.
_ANISOTROPY = 0.10


def is_slide_file(path: str | os.PathLike) -> bool:
    """Whether a file name is a whole-slide or pyramid format (by its ending, any case).

    Why by name: it sorts a folder's inputs without opening each file; :func:`open_slide`
    still decides from the content.
    """
    name = Path(path).name.lower()
    return any(name.endswith(suffix) for suffix in SLIDE_SUFFIXES)


def _float_property(properties: Mapping[str, str], key: str) -> float | None:
    """A positive finite number from OpenSlide's properties, else None."""
    try:
        value = float(properties[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


class OpenSlideReader(SlideReader):
    """A slide read through OpenSlide.

    Regions are read in the bounds' frame: ``read_region(0, 0, ...)`` is the bounds' corner,
    and :attr:`SlideInfo.width`/``height`` and ``level_dimensions`` are the bounds' size
    (levels rounded up), as QuPath shows such slides. Transparent pixels (outside the scanned
    area) come back white.
    """

    def __init__(self, path: Path) -> None:
        try:
            self._slide: openslide.OpenSlide | None = openslide.OpenSlide(path)
        except (openslide.OpenSlideError, OSError) as exc:
            raise CellDataError(f"{path}: OpenSlide cannot open it: {exc}") from exc
        props = self._slide.properties
        downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        dims = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        bounds = [props.get(f"openslide.bounds-{k}") for k in ("x", "y", "width", "height")]
        offset = (0, 0)
        if None not in bounds:
            bx, by, bw, bh = (int(v) for v in bounds)
            offset = (bx, by)
            dims = tuple((math.ceil(bw / d), math.ceil(bh / d)) for d in downsamples)
        super().__init__(
            SlideInfo(
                path=path,
                width=dims[0][0],
                height=dims[0][1],
                level_dimensions=dims,
                level_downsamples=downsamples,
                pixel_size_um=_float_property(props, openslide.PROPERTY_NAME_MPP_X),
                offset=offset,
                reader="openslide",
                pixel_size_y_um=_float_property(props, openslide.PROPERTY_NAME_MPP_Y),
                objective_power=_float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
                vendor=props.get(openslide.PROPERTY_NAME_VENDOR, ""),
            )
        )

    def close(self) -> None:
        """Close the OpenSlide handle (idempotent)."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        if self._slide is None:
            raise CellDataError(f"{self.info.path}: the slide is closed")
        ox, oy = self.info.offset
        try:
            region = self._slide.read_region((x + ox, y + oy), level, (width, height))
        except (openslide.OpenSlideError, OSError) as exc:
            raise CellDataError(
                f"{self.info.path}: OpenSlide cannot read level {level} at x={x} y={y}: {exc}"
            ) from exc
        return rgba_on_white(np.asarray(region))


def _probed(reader: SlideReader) -> SlideReader:
    """``reader`` after one small read of its coarsest level, so that a file whose tiles cannot
    be decoded fails at opening (naming the file) rather than halfway through a prediction."""
    try:
        reader.read_region(0, 0, reader.info.level_count - 1, 1, 1)
    except CellDataError:
        reader.close()
        raise
    return reader


def open_slide(path: str | os.PathLike) -> SlideReader:
    """Open a whole slide, OME-TIFF pyramid or plain image for reading regions.

    Why one entry point: the caller gets the same :class:`SlideReader` whatever the format;
    the choice of library (module notes) is made here once, from the file's content.

    Raises:
        CellDataError: a missing, corrupt, unreadable or unsupported file; the message names it
            and says what went wrong (never a raw OpenSlide or tifffile exception).
    """
    path = Path(path)
    if not path.is_file():
        raise CellDataError(f"{path}: file not found")
    if is_tiff_name(path) and needs_tifffile(path):
        return _probed(TiffPyramidReader(path))
    try:
        vendor = openslide.OpenSlide.detect_format(path)
    except (openslide.OpenSlideError, OSError):
        vendor = None
    openslide_problem = ""
    if vendor is not None:
        try:
            return _probed(OpenSlideReader(path))
        except CellDataError as exc:
            if not is_tiff_name(path):
                raise
            openslide_problem = str(exc)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        supported = " ".join(sorted(SLIDE_SUFFIXES | IMAGE_SUFFIXES))
        raise CellDataError(
            f"{path}: OpenSlide does not recognise this file: it is corrupt or not a slide "
            f"format (supported: {supported})"
        )
    try:
        return _probed(open_tiff_or_image(path))
    except CellDataError as exc:
        if openslide_problem:
            raise CellDataError(f"{openslide_problem}; tifffile: {exc}") from exc
        raise


def resolve_pixel_size(info: SlideInfo, override_um: float | None) -> float:
    """The µm per level-0 pixel to read a slide at: the user's value, else the metadata.

    Why so strict: every size in the prediction (the scale to the model's pixel size, tile
    sizes, areas in µm²) follows from this number, and a wrong one gives plausible-looking but
    wrong cells. So a missing value is never guessed (not even from the objective power), and a
    value outside :data:`PLAUSIBLE_PIXEL_SIZE_UM` is refused, from a file or from the user.

    Args:
        info: the slide (its path is named in errors).
        override_um: the user's ``--pixel-size``, or None to use the metadata.

    Raises:
        CellDataError: no usable value; the message names the file, the value found and says
            to pass ``--pixel-size``.
    """
    low, high = PLAUSIBLE_PIXEL_SIZE_UM
    if override_um is not None:
        value = float(override_um)
        if not (math.isfinite(value) and low <= value <= high):
            raise CellDataError(
                f"{info.path}: --pixel-size {override_um} µm/px is outside the plausible "
                f"{low}-{high} µm/px (0.25 is a 40x scan, 0.5 a 20x scan); give it in µm"
            )
        if info.pixel_size_um is not None and not math.isclose(value, info.pixel_size_um):
            logger.info(
                "%s: --pixel-size %g µm/px overrides the %g µm/px of its metadata",
                info.path,
                value,
                info.pixel_size_um,
            )
        return value
    value = info.pixel_size_um
    if value is None:
        power = info.objective_power
        hint = f" (it states a {power:g}x objective)" if power else ""
        raise CellDataError(
            f"{info.path}: the file states no pixel size{hint}; pass --pixel-size with the "
            "scan's µm per pixel (0.25 for a typical 40x scan, 0.5 for 20x)"
        )
    if not low <= value <= high:
        raise CellDataError(
            f"{info.path}: the file states a pixel size of {value:.4g} µm/px, outside the "
            f"plausible {low}-{high} µm/px (a default resolution tag such as 72 dpi gives "
            "352.8); pass --pixel-size with the scan's real µm per pixel"
        )
    y = info.pixel_size_y_um
    if y is not None and abs(value - y) > _ANISOTROPY * min(value, y):
        raise CellDataError(
            f"{info.path}: the pixels are not square ({value:.4g} µm along x, {y:.4g} µm along "
            "y); the model scales both axes alike, so pass --pixel-size to choose one"
        )
    return value
