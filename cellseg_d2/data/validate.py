"""Checks of the dataset folder and of the test id map, with messages that name the file.

Two kinds of check, split by cost:

- :func:`scan_dataset` only lists folders. It runs on every load (it also gives the converter
  its list of files to fingerprint), so a ``class5.tif`` beyond the four configured class names
  is reported even when a cache exists.
- :func:`read_train_sample` and :func:`read_test_images` decode pixels. The converter calls them
  once per file when it builds the cache, so every image is checked exactly when it is read.

Errors raise :class:`~cellseg_d2.data.io.CellDataError`. Oddities that do not stop training (a
training image without masks, a stray non-TIFF file) become warnings in a list, logged, and
turned into one error by :func:`raise_if_strict` when the user asks for ``--strict``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.data.io import read_image, read_image_size, read_instance_mask
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import (
    DEFAULT_CLASS_NAMES,
    ID_MAP_NAME,
    IMAGE_FILE_NAME,
    TEST_DIR,
    TRAIN_DIR,
    class_index_of,
)

__all__ = [
    "DEFAULT_MIN_IMAGE_SIZE",
    "DatasetFiles",
    "TrainFolder",
    "TrainSample",
    "check_image_size",
    "check_test_images",
    "list_tiff_images",
    "load_id_map",
    "raise_if_strict",
    "read_test_images",
    "read_train_sample",
    "scan_dataset",
]

logger = logging.getLogger(__name__)

#: Images with a side below this many pixels are rejected: too small to hold a cell, and
#: usually the sign of a broken export.
DEFAULT_MIN_IMAGE_SIZE = 16
_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class TrainFolder:
    """The files of one training image, as found on disk (nothing read yet).

    Attributes:
        name: the folder name, which identifies the image in splits and logs.
        image: path of ``image.tif``.
        masks: ``(category_id, path)`` for each present ``classK.tif``; ``category_id`` is 0-based.
    """

    name: str
    image: Path
    masks: tuple[tuple[int, Path], ...]


@dataclass
class DatasetFiles:
    """What :func:`scan_dataset` found under a dataset root.

    Attributes:
        root: the dataset root.
        train: training folders sorted by name; empty when there is no ``train/``.
        test_images: TIFFs in ``test_release/`` sorted by name; None when the folder is absent.
        id_map: path of ``test_image_name_to_ids.json`` when it exists.
        warnings: problems that do not stop training, one message each, naming the file.
    """

    root: Path
    train: list[TrainFolder]
    test_images: list[Path] | None
    id_map: Path | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainSample:
    """A decoded and checked training image.

    Attributes:
        height: image height in pixels.
        width: image width in pixels.
        masks: ``(category_id, HxW int64 labels)`` for each present class.
    """

    height: int
    width: int
    masks: list[tuple[int, np.ndarray]]


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    """Directory entries sorted by name, hidden ones (``.DS_Store``, temp files) left out.

    Raises:
        CellDataError: an entry's name is not valid UTF-8 (named by its repr, which prints
            safely): it could not be written to the JSON cache or an id map.
    """
    with os.scandir(folder) as entries:
        visible = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in visible:
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            raise CellDataError(
                f"{entry.path!r}: the name is not valid UTF-8; rename it (e.g. with convmv)"
            ) from None
    return visible


def list_tiff_images(folder: str | os.PathLike, warnings: list[str] | None = None) -> list[Path]:
    """The TIFF files of a folder of test images, sorted by name, hidden files left out.

    The one rule for what counts as a test image, shared by dataset scanning and prediction.

    Args:
        folder: the image folder (``test_release/`` or any ``--input``).
        warnings: if given, gets one message per other entry that was ignored.
    """
    folder = Path(folder)
    images = []
    for entry in _visible_entries(folder):
        path = folder / entry.name
        if entry.is_file() and entry.name.lower().endswith(_TIFF_SUFFIXES):
            images.append(path)
        elif warnings is not None:
            warnings.append(f"{path}: not a TIFF file; ignored")
    return images


def _scan_train_folder(entry: os.DirEntry, num_classes: int, warnings: list[str]) -> TrainFolder:
    """List one ``train/<id>/`` folder; raise on an unknown TIFF name or a missing image."""
    folder = Path(entry.path)
    masks = []
    has_image = False
    for item in _visible_entries(folder):
        path = folder / item.name
        category_id = class_index_of(item.name)
        if item.is_dir():
            warnings.append(f"{path}: unexpected folder inside a training image folder; ignored")
        elif item.name == IMAGE_FILE_NAME:
            has_image = True
        elif category_id is not None and category_id < num_classes:
            masks.append((category_id, path))
        elif category_id is not None:
            raise CellDataError(
                f"{path}: mask of class {category_id + 1}, but DATASETS.CLASS_NAMES (or "
                f"--class-names) lists only {num_classes} class(es); add the missing names"
            )
        elif item.name.lower().endswith(_TIFF_SUFFIXES):
            raise CellDataError(
                f"{path}: unexpected TIFF name; a training folder holds {IMAGE_FILE_NAME} and "
                f"masks named class1.tif..class{num_classes}.tif"
            )
        else:
            warnings.append(f"{path}: not a TIFF; ignored")
    if not has_image:
        raise CellDataError(f"{folder / IMAGE_FILE_NAME}: file not found")
    if not masks:
        warnings.append(
            f"{folder}: no class1..{num_classes}.tif mask; counted as an image without cells"
        )
    masks.sort()
    return TrainFolder(name=entry.name, image=folder / IMAGE_FILE_NAME, masks=tuple(masks))


def scan_dataset(
    root: str | os.PathLike, class_names: tuple[str, ...] | list[str] = DEFAULT_CLASS_NAMES
) -> DatasetFiles:
    """List a dataset root and check its layout without reading any pixels.

    Why: it is cheap (one directory listing per image), so every load runs it; the file list it
    returns is exactly what the converter reads and fingerprints.

    Args:
        root: folder holding ``train/`` and/or ``test_release/`` with the id map.
        class_names: the class names; ``classK.tif`` is accepted for K = 1..len(class_names).

    Returns:
        The files found, with warnings for harmless oddities (also logged).

    Raises:
        CellDataError: the root is missing or holds neither ``train/`` nor ``test_release/``; a
            training folder lacks ``image.tif`` or holds a TIFF with an unexpected name (e.g.
            ``mask.tif``, or ``class5.tif`` with four class names); ``test_release/`` exists
            without the id map; a name is not valid UTF-8.
    """
    root = Path(root)
    if not root.is_dir():
        raise CellDataError(f"{root}: dataset folder not found")
    train_dir, test_dir, id_map = root / TRAIN_DIR, root / TEST_DIR, root / ID_MAP_NAME
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise CellDataError(f"{root}: holds neither {TRAIN_DIR}/ nor {TEST_DIR}/")
    warnings: list[str] = []
    train = []
    if train_dir.is_dir():
        for entry in _visible_entries(train_dir):
            if entry.is_dir():
                train.append(_scan_train_folder(entry, len(class_names), warnings))
            else:
                warnings.append(f"{train_dir / entry.name}: not an image folder; ignored")
        if not train:
            warnings.append(f"{train_dir}: no training images")
    else:
        warnings.append(f"{train_dir}: folder not found; only the test set is available")
    test_images = None
    if test_dir.is_dir():
        if not id_map.is_file():
            raise CellDataError(f"{id_map}: file not found (needed for the images in {test_dir})")
        test_images = list_tiff_images(test_dir, warnings)
    elif id_map.is_file():
        warnings.append(f"{test_dir}: folder not found; the id map {id_map} is not used")
    for message in warnings:
        logger.warning(message)
    return DatasetFiles(
        root=root,
        train=train,
        test_images=test_images,
        id_map=id_map if id_map.is_file() else None,
        warnings=warnings,
    )


def check_image_size(path: str | os.PathLike, height: int, width: int, min_size: int) -> None:
    """Reject an image with a side below ``min_size`` pixels.

    Raises:
        CellDataError: naming ``path`` and its size.
    """
    if min(height, width) < min_size:
        raise CellDataError(
            f"{path}: image is {height}x{width} px, below the minimum side of {min_size} px"
        )


def read_train_sample(folder: TrainFolder, min_size: int = DEFAULT_MIN_IMAGE_SIZE) -> TrainSample:
    """Decode one training image and its masks and check that they fit together.

    The image is decoded in full (not just its header) because a truncated LZW stream only shows
    when the pixels are read; better here, once, than in a data-loader worker mid-training.

    Args:
        folder: from :func:`scan_dataset`.
        min_size: smallest accepted image side in pixels.

    Returns:
        The image size and the label image of each present class.

    Raises:
        CellDataError: unreadable or truncated TIFF, unsupported image shape, image too small,
            mask values that are not instance ids, or a mask whose shape differs from the image.
    """
    height, width = read_image(folder.image).shape[:2]
    check_image_size(folder.image, height, width, min_size)
    masks = []
    for category_id, path in folder.masks:
        labels = read_instance_mask(path)
        if labels.shape != (height, width):
            raise CellDataError(
                f"{path}: mask is {labels.shape[0]}x{labels.shape[1]} but "
                f"{folder.image} is {height}x{width}"
            )
        masks.append((category_id, labels))
    return TrainSample(height=height, width=width, masks=masks)


def read_test_images(files: DatasetFiles, min_size: int = DEFAULT_MIN_IMAGE_SIZE) -> list[dict]:
    """Check the id map against ``test_release/`` and decode every test image once.

    Why decode: a truncated file must surface at dataset preparation, not halfway through a
    prediction run.

    Args:
        files: from :func:`scan_dataset`, with ``test_images`` not None.
        min_size: smallest accepted image side in pixels.

    Returns:
        The id-map entries (``file_name``, ``id``, ``height``, ``width``), sorted by id.

    Raises:
        CellDataError: see :func:`check_test_images`.
    """
    if files.test_images is None or files.id_map is None:
        raise CellDataError(f"{files.root / TEST_DIR}: no test set (folder or id map missing)")
    return check_test_images(files.id_map, files.test_images, min_size=min_size, decode=True)


def check_test_images(
    map_path: str | os.PathLike,
    image_paths: list[Path],
    min_size: int = DEFAULT_MIN_IMAGE_SIZE,
    decode: bool = False,
) -> list[dict]:
    """Check that an id map and a set of test images agree, before any model work.

    Predictions are submitted under the map's ids and sizes, so every disagreement must stop
    the run up front. Sizes come from the TIFF headers unless ``decode`` is set, which also
    proves every file decodes (what dataset preparation wants; prediction decodes anyway).

    Returns:
        The id-map entries sorted by id.

    Raises:
        CellDataError: the map is malformed, repeats an id or a file name, names a file that is
            not among ``image_paths`` or misses one that is, disagrees with an image's size; or
            an image is unreadable or too small.
    """
    map_path = Path(map_path)
    entries = load_id_map(map_path)
    seen_names = {entry["file_name"] for entry in entries}
    on_disk = {path.name: path for path in image_paths}
    folder = image_paths[0].parent if image_paths else "the image folder"
    missing = sorted(seen_names - on_disk.keys())
    if missing:
        raise CellDataError(
            f"{map_path}: names {len(missing)} file(s) not in {folder}, e.g. {missing[0]}"
        )
    unlisted = sorted(on_disk.keys() - seen_names)
    if unlisted:
        raise CellDataError(
            f"{on_disk[unlisted[0]]}: test image missing from the id map {map_path} "
            f"({len(unlisted)} such file(s))"
        )
    for entry in entries:
        path = on_disk[entry["file_name"]]
        height, width = read_image(path).shape[:2] if decode else read_image_size(path)
        if (height, width) != (entry["height"], entry["width"]):
            raise CellDataError(
                f"{path}: image is {height}x{width} but {map_path} says "
                f"{entry['height']}x{entry['width']}"
            )
        check_image_size(path, height, width, min_size)
    return sorted(entries, key=lambda e: e["id"])


def raise_if_strict(warnings: list[str], strict: bool) -> None:
    """Turn collected warnings into one error when ``strict`` is set.

    Why: in a pipeline a surprise (an image without masks, a stray file) is often a broken
    export; ``--strict`` lets a script stop on it instead of training on partial data.

    Raises:
        CellDataError: listing every warning, when ``strict`` and there is at least one.
    """
    if strict and warnings:
        listed = "\n  ".join(warnings)
        raise CellDataError(f"{len(warnings)} warning(s) treated as errors (--strict):\n  {listed}")
