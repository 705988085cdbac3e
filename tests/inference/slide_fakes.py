"""A fake two-level slide of dark discs and a fake predictor that finds them, for the slide tests.

The slide is a numpy canvas (pink tissue on the left, white glass on the right) with discs of two
grey levels (class 0 darker, class 1 lighter) at known places, some on tile seams. The reader
has the attributes of ``cellseg_d2.data.slide.SlideReader`` and counts its reads; the predictor
thresholds a tile and returns one Detection per dark blob, so stitching can be checked exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage import draw, measure

from cellseg_d2.data.slide_base import SlideInfo
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_stitch import SlideCell

TISSUE_RGB = (225, 185, 205)
CLASS_VALUES = (20, 95)  # grey level of class 0 and class 1 discs
RADIUS = 5  # discs are 11 px wide at level 0

#: The real slide description (the fakes only replace the reader).
FakeSlideInfo = SlideInfo


class FakeSlideReader:
    """A two-level pyramid (1x, 2x) over a numpy RGB canvas; ``reads`` logs every read."""

    def __init__(
        self,
        path: str | os.PathLike,
        canvas: np.ndarray,
        pixel_size_um: float | None = 0.5,
        offset: tuple[int, int] = (0, 0),
    ) -> None:
        height, width = canvas.shape[:2]
        half = cv2.resize(canvas, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        self.levels = [canvas, half]
        self.info = FakeSlideInfo(
            Path(path),
            width,
            height,
            ((width, height), (width // 2, height // 2)),
            (1.0, 2.0),
            pixel_size_um,
            offset,
            "fake",
        )
        self.reads: list[tuple[int, int, int, int, int]] = []
        self.closed = False

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        self.reads.append((x, y, level, width, height))
        image = self.levels[level]
        downsample = self.info.level_downsamples[level]
        lx, ly = int(x // downsample), int(y // downsample)
        out = np.full((height, width, 3), 255, np.uint8)  # outside the slide: white
        sy, sx = max(ly, 0), max(lx, 0)
        part = image[sy : max(ly + height, 0), sx : max(lx + width, 0)]
        out[sy - ly : sy - ly + part.shape[0], sx - lx : sx - lx + part.shape[1]] = part
        return out

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        step = max(1, int(np.ceil(max(self.info.width, self.info.height) / max_size)))
        return self.levels[0][::step, ::step].copy(), float(step)

    def best_level_for_downsample(self, downsample: float) -> int:
        return max(i for i, d in enumerate(self.info.level_downsamples) if d <= downsample)

    def close(self) -> None:
        self.closed = True


def open_npz_slide(path: str | os.PathLike) -> FakeSlideReader:
    """Open a fake slide saved by :func:`save_slide` (module level: picklable for workers)."""
    with np.load(path) as data:
        pixel = float(data["pixel_size_um"])
        return FakeSlideReader(
            path, data["canvas"], pixel if pixel > 0 else None, tuple(data["offset"].tolist())
        )


def save_slide(
    path: Path, canvas: np.ndarray, pixel_size_um: float | None = 0.5, offset=(0, 0)
) -> Path:
    """Save a canvas as a fake slide file for :func:`open_npz_slide`."""
    with open(path, "wb") as handle:
        np.savez(
            handle,
            canvas=canvas,
            pixel_size_um=np.float64(pixel_size_um or 0),
            offset=np.asarray(offset),
        )
    return path


@dataclass(frozen=True)
class Disc:
    """A ground-truth cell: class, centre (pixel index) and its level-0 pixel mask box."""

    category: int
    cy: int
    cx: int
    area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 exclusive


def make_canvas(
    width: int = 320,
    height: int = 256,
    tissue_width: int = 200,
    seed: int = 0,
    extra: tuple[tuple[int, int], ...] = (),
    gap: int = 4,
    count: int = 60,
) -> tuple[np.ndarray, list[Disc]]:
    """A slide canvas: tissue in ``x < tissue_width``, white glass beyond, discs on tissue.

    Discs are placed at random (centres ``2 * RADIUS + gap`` apart at least, ``count`` in
    all) after the ``extra`` (row, column) centres (e.g. on tile seams); classes alternate.
    """
    rng = np.random.default_rng(seed)
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[:, :tissue_width] = TISSUE_RGB
    centres = list(extra)
    margin = RADIUS + 1
    for _ in range(4000):
        cy = int(rng.integers(margin, height - margin))
        cx = int(rng.integers(margin, tissue_width - margin))
        if all((cy - y) ** 2 + (cx - x) ** 2 >= (2 * RADIUS + gap) ** 2 for y, x in centres):
            centres.append((cy, cx))
        if len(centres) >= count:
            break
    discs = []
    for i, (cy, cx) in enumerate(centres):
        rows, cols = draw.disk((cy, cx), RADIUS + 0.5, shape=(height, width))
        category = i % 2
        canvas[rows, cols] = CLASS_VALUES[category]
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        discs.append(Disc(category, cy, cx, len(rows), box))
    return canvas, discs


class DiscPredictor:
    """Finds the dark discs of a BGR tile: one Detection per blob darker than the tissue.

    ``fail_after`` raises on that call (0-based) to simulate a crash; ``calls`` counts calls.
    """

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.calls = 0

    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return [self.detect(image) for image in images]

    @staticmethod
    def detect(image: np.ndarray) -> list[Detection]:
        grey = image[:, :, 1].astype(np.int32)  # green is the discs' grey level
        labels = measure.label(grey < (CLASS_VALUES[1] + 150) // 2, connectivity=1)
        detections = []
        for region in measure.regionprops(labels, intensity_image=grey):
            category = 0 if region.intensity_min < (CLASS_VALUES[0] + CLASS_VALUES[1]) // 2 else 1
            top, left, _, _ = region.bbox
            score = 0.5 + 0.4 * category
            detections.append(Detection(category, score, top, left, region.image.copy()))
        return detections


def slide_cell(
    x: float, y: float, tile: int = 0, category: int = 0, size: float = 4.0
) -> SlideCell:
    """A square cell as the stitcher would make it (for the store and writer tests)."""
    ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
    return SlideCell(
        tile=tile,
        category=category,
        score=0.75,
        box=(x, y, x + size, y + size),
        area=size * size,
        centroid_x=x + size / 2 - 0.5,
        centroid_y=y + size / 2 - 0.5,
        perimeter=4 * size,
        eccentricity=0.0,
        solidity=1.0,
        mean_rgb=(1.0, 2.0, 3.0),
        geometry=json.dumps({"type": "Polygon", "coordinates": [ring]}, separators=(",", ":")),
    )


def rank_disc_predictor(
    fail_rank: int | None = None, fail_after: int | None = None
) -> DiscPredictor:
    """A :class:`DiscPredictor` built inside a rank of a multi-process run (module level:
    picklable for spawned ranks); the one of rank ``fail_rank`` crashes on call ``fail_after``."""
    from detectron2.utils import comm

    return DiscPredictor(fail_after if comm.get_rank() == fail_rank else None)
