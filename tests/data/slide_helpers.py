"""Helpers shared by the slide reader tests (test_slide, test_slide_base, test_slide_tiff):
the real slides of ``../shared/data/slides`` (skipped when absent), a checkable pixel pattern
and synthetic OME-TIFF pyramids. No tests here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import SHARED_DATA

SLIDES = SHARED_DATA / "slides"


def real_slide(name: str) -> Path:
    """A real slide file of the shared data, or skip the test saying where it was looked for."""
    path = SLIDES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared slide files are not on this machine)")
    return path


def pattern(height: int, width: int) -> np.ndarray:
    """RGB uint8 whose every pixel differs from its neighbours: exact reads are checkable."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % 251, yy % 241, (7 * xx + 3 * yy) % 256], axis=2).astype(np.uint8)


def write_ome_pyramid(path: Path, base: np.ndarray, levels: int = 3) -> None:
    """An OME-TIFF pyramid as QuPath and bfconvert write it: levels 1.. in SubIFDs, tiled."""
    options = {"tile": (64, 64), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            base,
            subifds=levels - 1,
            metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm"},
            **options,
        )
        for level in range(1, levels):
            step = 2**level
            tif.write(base[::step, ::step], subfiletype=1, **options)
