"""Write a synthetic dataset in exactly the layout of the real (MoNuSAC-style) dataset.

Layout written under ``output``::

    train/<uuid>/image.tif          RGBA uint8, LZW-compressed, alpha 255
    train/<uuid>/classK.tif         float64 instance labels (0 = background), K in 1..N,
                                    only for the classes present in that image
    test_release/<uuid>.tif         RGBA uint8, LZW-compressed
    test_image_name_to_ids.json     [{"file_name": "<uuid>.tif", "id": i, "height": h,
                                      "width": w}, ...] with ids 1..M
    test_gt/<uuid>/classK.tif       ground truth of the test images, same format as train

Every image whose index in its split is a multiple of :data:`DENSE_EVERY` is *dense* (see
:func:`~cellseg_d2.data.synthetic.image.synthesize_image`). Every image holds at least one
epithelial cell, one lymphocyte and one rare cell (neutrophils on even indices, macrophages on
odd ones), so any two consecutive images normally show all four classes. With ``num_classes``
N other than 4, every image holds classes 1 and 2 (as far as N allows) and one of classes 3..N,
in turn, each drawn with the relative frequency of its base class.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import uuid
from pathlib import Path

import numpy as np

from cellseg_d2.data.io import write_tiff
from cellseg_d2.data.synthetic.image import check_num_classes, synthesize_image
from cellseg_d2.errors import OutputExistsError
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import (
    ID_MAP_NAME,
    IMAGE_FILE_NAME,
    TEST_DIR,
    TEST_GT_DIR,
    TRAIN_DIR,
    class_file_name,
)

__all__ = ["DENSE_EVERY", "MIN_IMAGE_SIZE", "generate_synthetic_dataset"]

logger = logging.getLogger(__name__)

#: Every image whose index in its split is a multiple of this is dense.
DENSE_EVERY = 20
#: Smallest accepted image side, in pixels.
MIN_IMAGE_SIZE = 32


def _validate(num_train: int, num_test: int, seed: int, min_size: int, max_size: int) -> None:
    """Raise ``ValueError`` with a user-facing message for arguments that cannot work."""
    for name, value in (("num_train", num_train), ("num_test", num_test), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if not isinstance(value, (int, np.integer)) or value < MIN_IMAGE_SIZE:
            raise ValueError(f"{name} must be an integer >= {MIN_IMAGE_SIZE}, got {value!r}")
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")


def _prepare_output(output: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier dataset, or remove its parts when ``overwrite`` is set."""
    parts = [output / TRAIN_DIR, output / TEST_DIR, output / TEST_GT_DIR]
    parts.append(output / ID_MAP_NAME)
    existing = [p for p in parts if p.exists()]
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing)
        raise OutputExistsError(
            f"{output} already holds a dataset ({names}); choose another folder or pass "
            "--overwrite (overwrite=True)"
        )
    for path in existing:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _write_masks(folder: Path, labels: dict[int, np.ndarray]) -> None:
    """Write ``classK.tif`` for each present class: float64, uncompressed, like the real data."""
    for cls, label in labels.items():
        write_tiff(folder / class_file_name(cls - 1), label, compression=None)


def _write_sample(
    output: Path, split: str, name: str, rgba: np.ndarray, labels: dict[int, np.ndarray]
) -> None:
    """Write one image and its masks where the real dataset keeps a ``split`` image."""
    if split == "train":
        write_tiff(output / TRAIN_DIR / name / IMAGE_FILE_NAME, rgba, compression="lzw")
        _write_masks(output / TRAIN_DIR / name, labels)
    else:
        write_tiff(output / TEST_DIR / f"{name}.tif", rgba, compression="lzw")
        _write_masks(output / TEST_GT_DIR / name, labels)


def _write_split(
    output: Path,
    split: str,
    split_index: int,
    count: int,
    sizes: tuple[int, int],
    seed: int,
    num_classes: int,
    names: random.Random,
    id_map: list[dict],
) -> dict:
    """Synthesize and write the ``count`` images of one split; return its statistics.

    Test images are appended to ``id_map``; folder and file names come from ``names``.
    """
    classes = range(1, num_classes + 1)
    stats = {
        "images": 0,
        "instances_per_class": dict.fromkeys(classes, 0),
        "max_cells_per_image": 0,
        "dense_images": 0,
    }
    min_size, max_size = sizes
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, i)))
        height = int(rng.integers(min_size, max_size + 1))
        width = int(rng.integers(min_size, max_size + 1))
        dense = i % DENSE_EVERY == 0
        required = list(classes[:2])
        if num_classes > 2:
            required.append(3 + i % (num_classes - 2))  # 3 and 4 in turn for four classes
        rgba, labels = synthesize_image(rng, height, width, dense, required, num_classes)
        name = str(uuid.UUID(int=names.getrandbits(128), version=4))
        _write_sample(output, split, name, rgba, labels)
        if split != "train":
            id_map.append(
                {"file_name": f"{name}.tif", "id": i + 1, "height": height, "width": width}
            )
        cells = 0
        for cls, label in labels.items():
            found = int(np.unique(label).size - 1)
            stats["instances_per_class"][cls] += found
            cells += found
        stats["images"] += 1
        stats["max_cells_per_image"] = max(stats["max_cells_per_image"], cells)
        stats["dense_images"] += int(dense)
        logger.debug("%s/%s: %dx%d, %d cells, dense=%s", split, name, height, width, cells, dense)
    logger.info(
        "%s: %d images, instances per class %s, at most %d cells in an image",
        split,
        stats["images"],
        stats["instances_per_class"],
        stats["max_cells_per_image"],
    )
    return stats


def generate_synthetic_dataset(
    output: str | os.PathLike,
    num_train: int,
    num_test: int,
    seed: int = 0,
    min_size: int = 256,
    max_size: int = 512,
    *,
    overwrite: bool = False,
    num_classes: int = 4,
) -> dict:
    """Write a synthetic dataset with the real dataset's layout under ``output``.

    Why: gives every test and the demo a realistic, reproducible dataset without shipping or
    downloading real data. The same arguments always give byte-identical files (uuids, sizes and
    pixels come from ``seed``; the TIFFs carry no timestamps).

    Image ``i`` of a split has its own random stream (``SeedSequence(seed, spawn_key=(split,
    i))``), its height and width drawn uniformly from ``[min_size, max_size]``; it is dense when
    ``i % DENSE_EVERY == 0``. Folder and file names are uuid4 strings drawn from
    ``random.Random(seed)``, train first.

    Args:
        output: dataset root; created if needed.
        num_train: number of training images (>= 0).
        num_test: number of test images (>= 0).
        seed: non-negative seed.
        min_size: smallest image side in pixels (>= 32).
        max_size: largest image side in pixels (>= min_size).
        overwrite: remove an earlier dataset's ``train``, ``test_release``, ``test_gt`` and id
            map under ``output`` first, instead of failing.
        num_classes: number of classes N (1..16): masks ``class1.tif``..``classN.tif``; train
            on them with N names in ``DATASETS.CLASS_NAMES``.

    Returns:
        A summary: ``output``, ``seed``, ``images``, ``instances_per_class`` (``{K: count}``),
        ``max_cells_per_image`` and ``dense_images`` over both splits, and the same keys per
        split under ``splits["train"]`` and ``splits["test"]``.

    Raises:
        ValueError: invalid counts, seed, sizes or number of classes.
        OutputExistsError: ``output`` already holds a dataset and ``overwrite`` is False (a
            ``FileExistsError``).
    """
    # Long for its docstring: the code is one short pass (check, write splits, id map).
    _validate(num_train, num_test, seed, min_size, max_size)
    check_num_classes(num_classes)
    classes = range(1, num_classes + 1)
    output = Path(output)
    _prepare_output(output, overwrite)
    names = random.Random(seed)
    splits: dict[str, dict] = {}
    id_map: list[dict] = []
    for split_index, (split, count) in enumerate((("train", num_train), ("test", num_test))):
        splits[split] = _write_split(
            output,
            split,
            split_index,
            count,
            (min_size, max_size),
            seed,
            num_classes,
            names,
            id_map,
        )
    (output / TRAIN_DIR).mkdir(parents=True, exist_ok=True)
    (output / TEST_DIR).mkdir(parents=True, exist_ok=True)
    (output / TEST_GT_DIR).mkdir(parents=True, exist_ok=True)
    with atomic_write(output / ID_MAP_NAME, "w") as handle:
        json.dump(id_map, handle, indent=2)
        handle.write("\n")
    return {
        "output": str(output),
        "seed": seed,
        "images": sum(s["images"] for s in splits.values()),
        "instances_per_class": {
            cls: sum(s["instances_per_class"][cls] for s in splits.values()) for cls in classes
        },
        "max_cells_per_image": max(s["max_cells_per_image"] for s in splits.values()),
        "dense_images": sum(s["dense_images"] for s in splits.values()),
        "splits": splits,
    }
