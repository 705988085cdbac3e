"""Import a PanNuke fold: ``images.npy`` (N x H x W x 3) and ``masks.npy`` (N x H x W x 6).

The source is the fold's folder (``Fold 1/`` as downloaded, searched recursively for exactly one
``images.npy`` and one ``masks.npy``) or the ``images.npy`` file itself. Mask channels 0-4 are
the instance maps of Neoplastic, Inflammatory, Connective, Dead and Epithelial cells, the
default class names (``--class-names`` renames them, five names); channel 5 is the background
and is not read.

The arrays are memory-mapped (a fold's masks are ~8 GB of float64) and read one image at a
time; ``.npy`` files are loaded without pickles. Images are stored as float 0..255 in the
release: they are rounded to uint8. An id may repeat across the five channels of one image
(they are separate maps), so the cells are renumbered 1..n over the channels in order (each
channel's ids in increasing order): ids stay unique within the image and every cell keeps its
pixels exactly. Images are named
``<folder>_<index>`` (e.g. ``fold1_00042``), the folder being the one holding ``images.npy``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellseg_d2.data.importers.common import ClassTable, ImportedImage, ImportSummary, safe_name
from cellseg_d2.errors import CellDataError

__all__ = ["PANNUKE_CLASS_NAMES", "read_pannuke"]

logger = logging.getLogger(__name__)

#: The classes of mask channels 0-4.
PANNUKE_CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
_CHANNELS = len(PANNUKE_CLASS_NAMES)


def _one(source: Path, name: str) -> Path:
    """The single file ``name`` under ``source`` (searched recursively)."""
    found = sorted(p for p in source.rglob(name) if p.is_file())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(str(p) for p in found[:3])})"
        raise CellDataError(f"{source}: expected one {name} below it, found {what}")
    return found[0]


def _files(source: Path) -> tuple[Path, Path]:
    """``(images.npy, masks.npy)`` of a fold folder or of a given ``images.npy``."""
    if source.is_file():
        masks = source.with_name("masks.npy")
        if not masks.is_file():
            masks = _one(source.parent.parent.parent, "masks.npy")
        return source, masks
    if not source.is_dir():
        raise CellDataError(f"{source}: PanNuke fold folder not found")
    return _one(source, "images.npy"), _one(source, "masks.npy")


def _load(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file (no pickles)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CellDataError(f"{path}: unreadable .npy (pickled arrays are refused): {exc}") from exc


def _image(array: np.ndarray, where: str) -> np.ndarray:
    """One PanNuke image as uint8 (float 0..255 in the release)."""
    if array.dtype == np.uint8:
        return np.array(array)
    data = np.asarray(array, dtype=np.float64)
    if not np.isfinite(data).all() or data.min() < 0 or data.max() > 255:
        raise CellDataError(f"{where}: image values must lie in 0..255")
    return np.rint(data).astype(np.uint8)


def _channel_ids(channel: np.ndarray, where: str) -> np.ndarray:
    """One mask channel as int64 instance ids, refused when not whole and non-negative."""
    data = np.asarray(channel)
    if np.issubdtype(data.dtype, np.floating) and (
        not np.isfinite(data).all() or (data != np.floor(data)).any()
    ):
        raise CellDataError(f"{where}: instance ids must be whole numbers")
    ids = data.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise CellDataError(f"{where}: instance ids must not be negative")
    return ids


def read_pannuke(
    source: Path, classes: ClassTable, summary: ImportSummary
) -> Iterator[ImportedImage]:
    """Read one PanNuke fold; see the module notes.

    Args:
        source: the fold folder, or its ``images.npy``.
        classes: the import's class table (PanNuke's five names by default).
        summary: unused (nothing is skipped), kept for the common importer signature.

    Yields:
        One image at a time with one label image per present class.

    Raises:
        CellDataError: missing or unreadable arrays, shapes that do not fit (file named), or
            non-integer ids (image index and channel named).
    """
    image_path, mask_path = _files(source)
    images, masks = _load(image_path), _load(mask_path)
    if images.ndim != 4 or images.shape[3] != 3:
        raise CellDataError(f"{image_path}: expected N x H x W x 3, got shape {images.shape}")
    if masks.ndim != 4 or masks.shape[3] != _CHANNELS + 1:
        raise CellDataError(f"{mask_path}: expected N x H x W x 6, got shape {masks.shape}")
    if masks.shape[:3] != images.shape[:3]:
        raise CellDataError(
            f"{mask_path}: masks are {masks.shape[:3]} (N, H, W) but {image_path} holds "
            f"{images.shape[:3]}"
        )
    if classes.given < _CHANNELS:
        raise CellDataError(
            f"--class-names: PanNuke has {_CHANNELS} classes (channels 0-4), {classes.given} "
            "names given"
        )
    prefix = safe_name(image_path.parent.name.replace(" ", "").lower())
    logger.info("%s: %d images of %dx%d", image_path, *images.shape[:3])
    for index in range(images.shape[0]):
        where = f"{mask_path}: image {index}"
        labels: dict[int, np.ndarray] = {}
        offset = 0
        for channel in range(_CHANNELS):
            ids = _channel_ids(masks[index, :, :, channel], f"{where}, channel {channel}")
            if not ids.any():
                continue
            values, inverse = np.unique(ids, return_inverse=True)
            renumbered = inverse.reshape(ids.shape).astype(np.int64)
            if values[0] != 0:
                renumbered += 1
            renumbered[ids > 0] += offset
            labels[channel] = renumbered
            offset = int(renumbered.max())
        image = _image(images[index], f"{image_path}: image {index}")
        yield ImportedImage(f"{prefix}_{index:05d}", image, labels, where)
