"""``<root>/dataset.json``: what a dataset folder is about, beside its images and masks.

The importers (``tools/import_dataset.py``) write it; a dataset made by hand may have none. It
holds what the folder layout cannot say by itself::

    {
      "class_names": ["epithelial", "lymphocyte"],   # name K is the class of classK.tif
      "pixel_size_um": 0.25,                         # micrometres per pixel, or null if unknown
      "source_format": "coco"                        # the importer that wrote the folder
    }

so that ``DATASETS.CLASS_NAMES`` need not be typed again and the pixel size travels with the
data. The file is small and read with the bounded JSON parser of
:func:`~cellseg_d2.data.validate.parse_json`; every field is checked on reading.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import atomic_write, parse_json
from cellseg_d2.utils.layout import check_class_names

__all__ = [
    "DATASET_INFO_NAME",
    "DatasetInfo",
    "apply_dataset_info",
    "read_dataset_info",
    "write_dataset_info",
]

logger = logging.getLogger(__name__)

#: File name of the dataset description at a dataset root.
DATASET_INFO_NAME = "dataset.json"
#: Refuse a ``dataset.json`` larger than this: it holds a few names and numbers.
_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class DatasetInfo:
    """The content of ``dataset.json``.

    Attributes:
        class_names: name K is the class of ``classK.tif``.
        pixel_size_um: micrometres per pixel, None when unknown.
        source_format: the importer that wrote the dataset (``"coco"``, ``"qupath"``, ...), or
            None.
    """

    class_names: tuple[str, ...]
    pixel_size_um: float | None = None
    source_format: str | None = None


def _check_pixel_size(value: object, source: str) -> float | None:
    """A positive, finite pixel size in µm/px, or None; anything else is refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CellDataError(f"{source}: pixel_size_um must be a number or null, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise CellDataError(f"{source}: pixel_size_um must be positive and finite, got {value}")
    return float(value)


def write_dataset_info(root: str | os.PathLike, info: DatasetInfo) -> Path:
    """Write ``<root>/dataset.json`` atomically.

    Args:
        root: the dataset root.
        info: what to record; the class names and pixel size are checked first.

    Returns:
        The path written.

    Raises:
        CellDataError: bad class names or pixel size.
    """
    path = Path(root) / DATASET_INFO_NAME
    data = {
        "class_names": list(check_class_names(info.class_names, key=str(path))),
        "pixel_size_um": _check_pixel_size(info.pixel_size_um, str(path)),
        "source_format": info.source_format,
    }
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    return path


def read_dataset_info(root: str | os.PathLike) -> DatasetInfo | None:
    """Read and check ``<root>/dataset.json``; None when the root has none.

    Why here: the config code and the tools need the class names of an imported dataset without
    knowing how the importers wrote them.

    Raises:
        CellDataError: the file is unreadable, too large, not a JSON object, or holds bad class
            names, a bad pixel size or a non-string ``source_format``.
    """
    path = Path(root) / DATASET_INFO_NAME
    if not path.is_file():
        return None
    try:
        size = path.stat().st_size
        if size > _MAX_BYTES:
            raise CellDataError(f"{path}: {size} bytes; a dataset.json holds at most {_MAX_BYTES}")
        data = parse_json(path.read_bytes(), str(path))
    except OSError as exc:
        raise CellDataError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(data, dict) or "class_names" not in data:
        raise CellDataError(f"{path}: expected a JSON object with at least 'class_names'")
    source_format = data.get("source_format")
    if source_format is not None and not isinstance(source_format, str):
        raise CellDataError(f"{path}: source_format must be a string or null")
    return DatasetInfo(
        class_names=check_class_names(data["class_names"], key=f"{path}: class_names"),
        pixel_size_um=_check_pixel_size(data.get("pixel_size_um"), str(path)),
        source_format=source_format,
    )


def apply_dataset_info(cfg: CfgNode, explicit_keys: Collection[str]) -> CfgNode:
    """Fill the config from ``DATASETS.CELLS_ROOT/dataset.json``: class names (and the head's
    class count with them) and the pixel size, where the user chose none.

    Why: an imported dataset knows its classes; typing ``DATASETS.CLASS_NAMES`` and
    ``MODEL.ROI_HEADS.NUM_CLASSES`` again is where mistakes come from. A value the user chose
    still wins, and one that disagrees with the dataset is an error, not a silent choice.

    Rules:
        - ``DATASETS.CLASS_NAMES`` not in ``explicit_keys``: taken from the file, and
          ``MODEL.ROI_HEADS.NUM_CLASSES`` set to their count unless it is in ``explicit_keys``
          as a command-line key (pass only command-line keys for it; base configs set it).
        - ``DATASETS.CLASS_NAMES`` in ``explicit_keys`` and different from the file: error.
        - ``INPUT.PIXEL_SIZE`` 0 and the file has a pixel size: taken from the file.

    Args:
        cfg: a loaded (not frozen) config.
        explicit_keys: the keys the config files and the command line set, dotted; the
            command-line ones prefixed ``"cli:"`` (e.g. ``"cli:MODEL.ROI_HEADS.NUM_CLASSES"``).

    Returns:
        ``cfg`` itself when nothing changes, else a changed clone.

    Raises:
        CellDataError: a bad ``dataset.json`` or class names that disagree with it.
    """
    info = read_dataset_info(cfg.DATASETS.CELLS_ROOT)
    if info is None:
        return cfg
    path = Path(cfg.DATASETS.CELLS_ROOT) / DATASET_INFO_NAME
    names = tuple(info.class_names)
    configured = tuple(cfg.DATASETS.CLASS_NAMES)
    explicit = set(explicit_keys)
    chosen = "DATASETS.CLASS_NAMES" in explicit or "cli:DATASETS.CLASS_NAMES" in explicit
    if chosen and configured != names:
        raise CellDataError(
            f"DATASETS.CLASS_NAMES {list(configured)} differs from class_names {list(names)} "
            f"in {path}: drop DATASETS.CLASS_NAMES from the config to use the dataset's, or "
            "fix one of them"
        )
    changes: dict[str, Any] = {}
    if not chosen and configured != names:
        changes["DATASETS.CLASS_NAMES"] = list(names)
        if "cli:MODEL.ROI_HEADS.NUM_CLASSES" not in explicit:
            changes["MODEL.ROI_HEADS.NUM_CLASSES"] = len(names)
    if info.pixel_size_um and not cfg.INPUT.PIXEL_SIZE:
        changes["INPUT.PIXEL_SIZE"] = float(info.pixel_size_um)
    if not changes:
        return cfg
    logger.info("From %s: %s", path, ", ".join(f"{key} {value}" for key, value in changes.items()))
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list([item for pair in changes.items() for item in pair])
    return cfg
