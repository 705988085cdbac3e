"""Helpers shared by the importer tests: sources drawn in numpy/shapely, and checks of a root.

The expected masks are computed here independently of the importers: polygons are rasterised
with shapely's point-in-polygon test on the pixel centres (x + 0.5, y + 0.5), not with the
skimage/pycocotools code the importers use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

from cellseg_d2.data.io import read_instance_mask
from cellseg_d2.data.prepare import prepare_cell_dataset
from cellseg_d2.utils.layout import class_index_of


def star_polygon(
    rng: np.random.Generator, cx: float, cy: float, radius: float, points: int = 12
) -> list[tuple[float, float]]:
    """A star-shaped (so simple) polygon around (cx, cy) with radii in [0.7, 1] * radius."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = radius * rng.uniform(0.7, 1.0, points)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)]


def rasterise(geometry: shapely.Geometry, height: int, width: int) -> np.ndarray:
    """HxW bool: pixels whose centre lies inside ``geometry`` or on its outline (shapely,
    independent code; the importers' rule for a centre exactly on an outer outline)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return shapely.intersects_xy(geometry, xs + 0.5, ys + 0.5)


def polygon_mask(points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """:func:`rasterise` of a simple polygon given by its points."""
    return rasterise(Polygon(points), height, width)


def read_cells(folder: Path) -> list[tuple[int, np.ndarray]]:
    """``(0-based class, bool mask)`` of every cell in a folder of ``classK.tif`` files."""
    cells = []
    for path in sorted(folder.glob("class*.tif")):
        category = class_index_of(path.name)
        labels = read_instance_mask(path)
        for cell in np.unique(labels[labels > 0]):
            cells.append((category, labels == cell))
    return cells


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def match_cells(
    expected: list[tuple[int, np.ndarray]], found: list[tuple[int, np.ndarray]]
) -> list[float]:
    """For each expected cell, the IoU of the best same-class found cell (0 if none); the
    counts must agree."""
    assert len(found) == len(expected), (len(found), len(expected))
    scores = []
    for category, mask in expected:
        candidates = [iou(mask, m) for c, m in found if c == category]
        scores.append(max(candidates, default=0.0))
    return scores


def dataset_info(root: Path) -> dict:
    """The ``dataset.json`` of an imported root."""
    return json.loads((root / "dataset.json").read_text())


def prepare(root: Path) -> dict[str, int]:
    """Run the project's validation and conversion on an imported root; cells per class."""
    names = dataset_info(root)["class_names"]
    summary = prepare_cell_dataset(root, min_area=0, class_names=names)
    return summary.instances_per_class


def no_leftovers(root: Path) -> bool:
    """True when no temporary import folder is left beside ``root``."""
    return not any(p.name.startswith(f".{root.name}.importing-") for p in root.parent.iterdir())
