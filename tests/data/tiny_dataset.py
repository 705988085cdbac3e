"""The tiny dataset most data tests build: two training images covering the conversion's cases
(a two-piece cell, a 2-px cell below ``min_area``, a cell on the border, ids across classes) and
two test images with an id map."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cellseg_d2.data.io import write_tiff


def rgba_image(height: int, width: int) -> np.ndarray:
    """An RGBA uint8 image with constant alpha, like the real exports."""
    rgba = np.full((height, width, 4), 255, np.uint8)
    rgba[..., :3] = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    return rgba


def labels_a() -> dict[int, np.ndarray]:
    """Masks of image ``a``: a box, a two-piece cell, a 2-px cell (dropped), ids across classes."""
    class1 = np.zeros((20, 24), np.float64)
    class1[2:6, 3:9] = 5  # 24 px box
    class1[10:13, 1:4] = 9  # instance 9, piece one ...
    class1[15:18, 18:22] = 9  # ... and piece two
    class1[0, 22:24] = 2  # 2 px: below min_area=4
    class3 = np.zeros((20, 24), np.float64)
    class3[6:20, 10:12] = 11  # touches the bottom border
    return {1: class1, 3: class3}


def make_dataset(root: Path) -> Path:
    """A tiny dataset: train/a (3 masks' worth of cases), train/b (class2 only), two test images."""
    write_tiff(root / "train" / "a" / "image.tif", rgba_image(20, 24), compression="lzw")
    for cls, labels in labels_a().items():
        write_tiff(root / "train" / "a" / f"class{cls}.tif", labels)
    write_tiff(root / "train" / "b" / "image.tif", rgba_image(18, 16), compression="lzw")
    class2 = np.zeros((18, 16), np.float64)
    class2[:, 0:2] = 40  # full-height column run
    write_tiff(root / "train" / "b" / "class2.tif", class2)
    write_tiff(root / "test_release" / "x.tif", rgba_image(17, 19), compression="lzw")
    write_tiff(root / "test_release" / "y.tif", rgba_image(21, 16), compression="lzw")
    id_map = [
        {"file_name": "x.tif", "id": 7, "height": 17, "width": 19},
        {"file_name": "y.tif", "id": 3, "height": 21, "width": 16},
    ]
    (root / "test_image_name_to_ids.json").write_text(json.dumps(id_map))
    return root


def bump_mtime(path: Path) -> None:
    """Move a file's mtime forward so a rewrite is visible even on coarse-clock file systems."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
