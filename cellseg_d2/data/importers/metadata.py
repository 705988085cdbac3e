"""The pixel size (µm/px) a TIFF declares, for ``dataset.json``.

Read, in this order, from:

1. OME-XML (``PhysicalSizeX`` of the first ``Pixels`` element, unit ``PhysicalSizeXUnit``,
   micrometres by default), what QuPath, Bio-Formats and most scanners' exports write;
2. ImageJ metadata (``unit=micron`` or ``um``, with ``XResolution`` in pixels per unit);
3. the TIFF resolution tags when ``ResolutionUnit`` is centimetre.

NOTE: a resolution in pixels per *inch* is ignored: 72 or 96 dpi is what many writers put
there by default, and it says nothing about the microscope. Only the header is read, and the
OME-XML is searched with a regular expression (no XML parser runs on file content).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import tifffile

__all__ = ["pixel_size_of"]

logger = logging.getLogger(__name__)

_OME_PIXELS = re.compile(r"<(?:\w+:)?Pixels\b[^>]*>", re.S)
_OME_ATTR = re.compile(r'\b(PhysicalSizeX|PhysicalSizeXUnit)="([^"]*)"')
#: Micrometres per unit of the length units OME and ImageJ use.
_UNITS = {
    "um": 1.0,
    "µm": 1.0,
    "\u03bcm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}
_CENTIMETER = 3


def _positive(value: float) -> float | None:
    """``value`` if it is a usable pixel size, else None."""
    return value if math.isfinite(value) and 0 < value < 1e6 else None


def _ome_size(xml: str) -> float | None:
    """PhysicalSizeX of the first OME Pixels element, in µm."""
    match = _OME_PIXELS.search(xml)
    if not match:
        return None
    attrs = dict(_OME_ATTR.findall(match.group(0)))
    if "PhysicalSizeX" not in attrs:
        return None
    scale = _UNITS.get(attrs.get("PhysicalSizeXUnit", "µm").strip())
    try:
        value = float(attrs["PhysicalSizeX"])
    except ValueError:
        return None
    return None if scale is None else _positive(value * scale)


def _resolution(page: tifffile.TiffPage) -> float | None:
    """XResolution of a page as pixels per unit."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, tuple) and len(value) == 2 and value[1]:
        return value[0] / value[1]
    return float(value) if isinstance(value, (int, float)) else None


def pixel_size_of(path: Path) -> float | None:
    """The pixel size in µm/px a TIFF declares, None when it declares none (or not a TIFF).

    Why: an imported dataset should carry its scale, so training can later match the model's
    pixel size; see the module notes for which metadata count.
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                size = _ome_size(tif.ome_metadata)
                if size is not None:
                    return size
            page = tif.pages.first
            per_unit = _resolution(page)
            if not per_unit:
                return None
            meta = tif.imagej_metadata if tif.is_imagej else None
            if meta and str(meta.get("unit", "")).strip() in _UNITS:
                return _positive(_UNITS[str(meta["unit"]).strip()] / per_unit)
            unit = page.tags.get("ResolutionUnit")
            if unit is not None and int(unit.value) == _CENTIMETER:
                return _positive(1e4 / per_unit)
    except Exception as exc:  # metadata is optional: never fail an import on it
        logger.debug("%s: no pixel size read (%s)", path, exc)
    return None
