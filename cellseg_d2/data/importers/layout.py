"""Write an imported dataset in the project's layout, all or nothing.

:class:`DatasetWriter` builds the whole dataset in a hidden temporary folder beside the output
root (``.<root>.importing-XXXX``) and renames it into place only at :meth:`DatasetWriter.commit`;
on any error the temporary folder is removed, so a failed import leaves nothing behind and an
existing dataset is only replaced (``--overwrite``) by a complete new one. The tree written is
the one ``datasets/README.md`` describes::

    train/<name>/image.tif                 the image (a TIFF source is copied byte for byte)
    train/<name>/classK.tif                instance ids of class K (uint8/16/32, 0 = background)
    test_release/<name>.tif                test images (when a test source is given)
    test_image_name_to_ids.json            ids 1..M in name order, with height and width
    test_gt/<name>/classK.tif              their ground truth
    dataset.json                           class names, pixel size, source format

Within an image, a cell's id is the same number in whichever ``classK.tif`` holds it, and no
two cells of an image share an id (the convention of the real data).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cellseg_d2.data.dataset_info import DatasetInfo, write_dataset_info
from cellseg_d2.data.importers.common import ClassTable, ImportSummary, label_dtype, safe_name
from cellseg_d2.data.importers.metadata import pixel_size_of
from cellseg_d2.data.io import read_any_image, read_image, write_tiff
from cellseg_d2.data.validate import DEFAULT_MIN_IMAGE_SIZE
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import (
    ID_MAP_NAME,
    IMAGE_FILE_NAME,
    TEST_DIR,
    TRAIN_DIR,
    class_file_name,
    class_index_of,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetWriter",
    "find_image",
    "stage_image",
]

logger = logging.getLogger(__name__)

#: Image files the importers read: TIFFs with the project's reader, the others with Pillow.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
_GT_DIR = "test_gt"


def find_image(folders: list[Path], stem: str) -> Path | None:
    """The image file named ``stem`` + one of :data:`IMAGE_SUFFIXES` in the first folder that
    has one, or None.

    Raises:
        CellDataError: a folder holds several images of that stem (e.g. ``a.png`` and ``a.tif``).
    """
    for folder in folders:
        found = [
            folder / f"{stem}{suffix}"
            for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)
            if (folder / f"{stem}{suffix}").is_file()
        ]
        found = sorted(set(found))
        if len(found) > 1:
            raise CellDataError(
                f"{folder}: several images named {stem!r} ({', '.join(p.name for p in found)}); "
                "keep one"
            )
        if found:
            return found[0]
    return None


def stage_image(source: Path | np.ndarray, dest: Path, where: str) -> tuple[int, int]:
    """Put an image into the layout at ``dest`` and return its ``(height, width)``.

    A TIFF that the project's reader accepts is copied byte for byte (16-bit data and metadata
    kept); other files and arrays are written as TIFF with their pixels unchanged. The result is
    checked with the project's reader, so the dataset never holds an image training would refuse.

    Raises:
        CellDataError: unreadable or unsupported image (e.g. a varying alpha channel), or one
            with a side below the project's minimum.
    """
    if isinstance(source, Path) and source.suffix.lower() in (".tif", ".tiff"):
        read_image(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    else:
        array = read_any_image(source) if isinstance(source, Path) else source
        write_tiff(dest, np.ascontiguousarray(array), compression="zlib")
    try:
        height, width = read_image(dest).shape[:2]
    except CellDataError as exc:
        raise CellDataError(f"{where}: {str(exc).replace(str(dest), 'image')}") from exc
    if min(height, width) < DEFAULT_MIN_IMAGE_SIZE:
        raise CellDataError(
            f"{where}: image is {height}x{width} px, below the minimum side of "
            f"{DEFAULT_MIN_IMAGE_SIZE} px that training accepts"
        )
    return height, width


def _check_output(root: Path, overwrite: bool, sources: list[Path]) -> None:
    """Refuse a non-empty root without ``overwrite``, and a root that holds a source."""
    if root.exists() and not root.is_dir():
        raise CellDataError(f"{root}: exists and is not a folder")
    for source in sources:
        resolved = source.resolve()
        if resolved == root or root in resolved.parents:
            raise CellDataError(
                f"{root}: holds the source {source}; choose an output folder outside it"
            )
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise CellDataError(
            f"{root}: exists and is not empty; choose a new folder or pass --overwrite"
        )


class DatasetWriter:
    """Collects the images of an import in a temporary folder; :meth:`commit` publishes them.

    Use as a context manager: leaving the block without :meth:`commit` (an error) removes the
    temporary folder.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: ClassTable,
        summary: ImportSummary,
        *,
        overwrite: bool = False,
        sources: list[Path] = (),
    ) -> None:
        """Check the output root and create the temporary folder beside it.

        Args:
            root: the dataset root to write.
            classes: the importer's class table (its final order names the mask files).
            summary: counts images and cells as they are written.
            overwrite: replace an existing non-empty root.
            sources: the input files and folders; a root containing one is refused.

        Raises:
            CellDataError: the root exists and is not empty (without ``overwrite``), is a file,
                or holds a source.
        """
        self.root = Path(root).absolute()
        _check_output(self.root.resolve(), overwrite, list(sources))
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.root.name}.importing-", dir=self.root.parent)
        )
        self.classes = classes
        self.summary = summary
        self.cells: dict[int, int] = {}
        self.names: dict[str, set[str]] = {"train": set(), "test": set()}
        self.test_entries: list[dict] = []
        self.pixel_sizes: list[float] = []

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _unique(self, split: str, name: str) -> str:
        """A safe name not used yet in ``split`` (``x``, ``x-2``, ``x-3``, ...)."""
        base = safe_name(name)
        candidate, n = base, 1
        while candidate in self.names[split]:
            n += 1
            candidate = f"{base}-{n}"
        self.names[split].add(candidate)
        return candidate

    def add(
        self,
        split: str,
        name: str,
        image: Path | np.ndarray,
        labels: dict[int, np.ndarray],
        where: str,
    ) -> str:
        """Write one image and its label images (``{class index: HxW ids}``) into ``split``.

        Args:
            split: ``"train"`` or ``"test"``.
            name: the source's name of the image (made safe and unique).
            image: the image file, or its pixels.
            labels: per class index, the instance ids of that class (0 = background).
            where: the source files, for messages.

        Returns:
            The name used in the layout.

        Raises:
            CellDataError: unreadable image, or a label image whose size differs from it.
        """
        name = self._unique(split, name)
        if split == "train":
            folder = self.tmp / TRAIN_DIR / name
            image_path = folder / IMAGE_FILE_NAME
        else:
            folder = self.tmp / _GT_DIR / name
            image_path = self.tmp / TEST_DIR / f"{name}.tif"
        height, width = stage_image(image, image_path, where)
        if isinstance(image, Path):
            size = pixel_size_of(image)
            if size is not None:
                self.pixel_sizes.append(size)
        folder.mkdir(parents=True, exist_ok=True)
        for category, label in sorted(labels.items()):
            if label.shape != (height, width):
                raise CellDataError(
                    f"{where}: annotation is {label.shape[0]}x{label.shape[1]} px but the image "
                    f"is {height}x{width} px"
                )
            ids = np.unique(label)
            count = int(ids.size - (ids[0] == 0))
            if count == 0:
                continue
            label = label.astype(label_dtype(int(ids[-1])), copy=False)
            write_tiff(folder / class_file_name(category), label, compression="zlib")
            self.cells[category] = self.cells.get(category, 0) + count
        if split == "test":
            self.test_entries.append({"file_name": f"{name}.tif", "height": height, "width": width})
        self.summary.images[split] += 1
        logger.debug("%s -> %s/%s (%d classes)", where, split, name, len(labels))
        return name

    def _renumber_classes(self, mapping: list[int]) -> None:
        """Rename ``classK.tif`` files after the class table put collected names in order."""
        if mapping == list(range(len(mapping))):
            return
        for parent in (self.tmp / TRAIN_DIR, self.tmp / _GT_DIR):
            if not parent.is_dir():
                continue
            for folder in parent.iterdir():
                moved = []
                for path in folder.iterdir():
                    index = class_index_of(path.name)
                    if index is not None:
                        staged = folder / f".renumber-{mapping[index]}"
                        path.rename(staged)
                        moved.append((staged, folder / class_file_name(mapping[index])))
                for staged, final in moved:
                    staged.rename(final)

    def _pixel_size(self, given: float | None) -> float | None:
        """The pixel size to record: the given one, else the images' if they all agree."""
        if given is not None:
            return given
        if not self.pixel_sizes:
            return None
        low, high = min(self.pixel_sizes), max(self.pixel_sizes)
        if high > low * 1.01:
            logger.warning(
                "the images' pixel sizes differ (%g..%g um/px); none recorded (--pixel-size)",
                low,
                high,
            )
            return None
        return self.pixel_sizes[0]

    def commit(self, pixel_size_um: float | None, overwrite: bool) -> ImportSummary:
        """Write the id map and ``dataset.json``, then move the dataset into place.

        Raises:
            CellDataError: nothing was imported, or a class index has no name.
        """
        if not any(self.summary.images.values()):
            raise CellDataError("no image was imported; check the source and its file names")
        names, mapping = self.classes.final_order()
        if not names:
            raise CellDataError("no class name known; give them with --class-names")
        self._renumber_classes(mapping)
        (self.tmp / TRAIN_DIR).mkdir(exist_ok=True)
        if self.test_entries:
            entries = sorted(self.test_entries, key=lambda e: e["file_name"])
            id_map = [
                {"file_name": e["file_name"], "id": i, "height": e["height"], "width": e["width"]}
                for i, e in enumerate(entries, 1)
            ]
            with atomic_write(self.tmp / ID_MAP_NAME, "w") as handle:
                json.dump(id_map, handle, indent=2)
                handle.write("\n")
        size = self._pixel_size(pixel_size_um)
        write_dataset_info(self.tmp, DatasetInfo(tuple(names), size, self.summary.source_format))
        counts = [0] * len(names)
        for index, count in self.cells.items():
            counts[mapping[index]] += count
        self.summary.cells = dict(zip(names, counts))
        self.summary.pixel_size_um = size
        self.summary.output = str(self.root)
        self._publish(overwrite)
        return self.summary

    def _publish(self, overwrite: bool) -> None:
        """Rename the temporary folder onto the root, replacing an old one only when allowed."""
        old = None
        if self.root.exists():
            if any(self.root.iterdir()) and not overwrite:
                raise CellDataError(f"{self.root}: appeared during the import; not replaced")
            old = self.root.parent / f"{self.tmp.name}.old"
            self.root.rename(old)
        try:
            self.tmp.rename(self.root)
        except OSError:
            if old is not None:
                old.rename(self.root)
            raise
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
        logger.info("dataset written to %s", self.root)
