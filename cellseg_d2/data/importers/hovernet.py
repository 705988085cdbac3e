"""Import the ``.mat`` labels of HoVer-Net-style datasets: CoNSeP, Lizard, MoNuSAC (as released
by the HoVer-Net authors).

Each ``NAME.mat`` (read with ``scipy.io.loadmat``; MATLAB v7.3/HDF5 files are refused with a
hint) holds ``inst_map`` (HxW instance ids, 0 = background) and the type of each instance in
one of two forms:

- CoNSeP / MoNuSAC: ``inst_type``, an N x 1 array; row ``i`` is the type of instance id
  ``i + 1``;
- Lizard: ``id`` and ``class``, two N x 1 arrays pairing each instance id with its type.

Types are 1-based: type K is the K-th name of ``--class-names`` (e.g. CoNSeP's seven:
``other,inflammatory,healthy_epithelial,dysplastic_epithelial,fibroblast,muscle,endothelial``;
Lizard's six: ``neutrophil,epithelial,lymphocyte,plasma,eosinophil,connective``); without
names, type K is named ``typeK``. Type 0 means background or unlabelled: such an instance has
no class and follows the shared rule (``--unclassified``, ``--skip-unclassified``, or refused).

Images: ``NAME.png`` (or another image suffix) in ``--images``; by default the first folder of
``Images``, ``images``, ``../Images``, ``../images`` (relative to the .mat folder) and the .mat
folder itself that holds it. Labels are found in the source folder or, if it has one, its
``Labels``/``labels`` subfolder. Ids are kept.

Refused (file and id named): an ``inst_map`` whose size differs from the image's, an instance
without a type row, an id paired with two types, a type above the number of names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.io

from cellseg_d2.data.importers.common import ClassTable, ImportedImage, ImportSummary
from cellseg_d2.data.importers.labels import split_by_class
from cellseg_d2.data.importers.layout import find_image
from cellseg_d2.data.io import image_size
from cellseg_d2.errors import CellDataError

__all__ = ["read_hovernet", "read_mat_labels"]

logger = logging.getLogger(__name__)

_KEYS = ["inst_map", "inst_type", "id", "class"]


def _whole(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``array`` as int64, refused when it holds non-integer or negative values."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.number):
        raise CellDataError(f"{path}: '{key}' must be numeric, got {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and (
        not np.isfinite(array).all() or (array != np.floor(array)).any()
    ):
        raise CellDataError(f"{path}: '{key}' must hold whole numbers")
    if array.size and array.min() < 0:
        raise CellDataError(f"{path}: '{key}' must not hold negative values")
    return array.astype(np.int64)


def read_mat_labels(path: Path) -> tuple[np.ndarray, dict[int, int]]:
    """``inst_map`` and ``{instance id: type}`` of a HoVer-Net ``.mat`` file.

    Why both forms: CoNSeP lists types by row (``inst_type``), Lizard pairs ``id`` and
    ``class``; the dict hides the difference from the rest of the import.

    Raises:
        CellDataError: unreadable file (v7.3 included), missing keys, bad shapes, or an id
            paired with two types.
    """
    try:
        data = scipy.io.loadmat(path, variable_names=_KEYS)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5)
        raise CellDataError(
            f"{path}: MATLAB v7.3 (HDF5) file; save it as v7 (-v7) to import it ({exc})"
        ) from exc
    except Exception as exc:  # scipy raises many types for corrupt files
        raise CellDataError(f"{path}: unreadable .mat file: {exc}") from exc
    if "inst_map" not in data:
        raise CellDataError(f"{path}: no 'inst_map' (keys: {sorted(data)})")
    inst_map = _whole(data["inst_map"], path, "inst_map")
    if inst_map.ndim != 2:
        raise CellDataError(f"{path}: 'inst_map' must be 2-D, got shape {inst_map.shape}")
    if "inst_type" in data:
        types = _whole(data["inst_type"], path, "inst_type").ravel()
        return inst_map, {i + 1: int(t) for i, t in enumerate(types.tolist())}
    if "id" in data and "class" in data:
        ids = _whole(data["id"], path, "id").ravel()
        classes = _whole(data["class"], path, "class").ravel()
        if ids.shape != classes.shape:
            raise CellDataError(
                f"{path}: 'id' has {ids.size} entries but 'class' has {classes.size}"
            )
        table: dict[int, int] = {}
        for cell, kind in zip(ids.tolist(), classes.tolist()):
            if table.get(cell, kind) != kind:
                raise CellDataError(
                    f"{path}: id {cell} appears in two classes ({table[cell]} and {kind})"
                )
            table[cell] = kind
        return inst_map, table
    raise CellDataError(
        f"{path}: no instance types: expected 'inst_type' (CoNSeP) or 'id' and 'class' (Lizard)"
    )


def _folders(source: Path, images: Path | None) -> tuple[Path, list[Path]]:
    """The .mat folder and the image folders to search, by the module's rules."""
    if not source.is_dir():
        raise CellDataError(f"{source}: folder of .mat files not found")
    label_dir = source
    for name in ("Labels", "labels"):
        if (source / name).is_dir() and not any(source.glob("*.mat")):
            label_dir = source / name
            break
    if images is not None:
        return label_dir, [images]
    candidates = [source / "Images", source / "images", source.parent / "Images"]
    candidates += [source.parent / "images", label_dir]
    return label_dir, [c for c in candidates if c.is_dir()]


def read_hovernet(
    source: Path, classes: ClassTable, summary: ImportSummary, *, images: Path | None = None
) -> Iterator[ImportedImage]:
    """Read HoVer-Net ``.mat`` labels and their images; see the module notes.

    Args:
        source: the folder of ``.mat`` files (or its parent with a ``Labels`` subfolder).
        classes: the import's class table (types are numbers: type K is name K).
        summary: gets skipped instances.
        images: the image folder; default as the module notes say.

    Yields:
        One image at a time with its label images split by type.

    Raises:
        CellDataError: naming the file and the instance id.
    """
    label_dir, image_dirs = _folders(source, images)
    files = sorted(p for p in label_dir.glob("*.mat") if not p.name.startswith("."))
    if not files:
        raise CellDataError(f"{label_dir}: no .mat file")
    for path in files:
        image = find_image(image_dirs, path.stem)
        if image is None:
            searched = ", ".join(str(d) for d in image_dirs) or "(no image folder found)"
            raise CellDataError(f"{path}: no image named {path.stem!r} in {searched} (--images)")
        inst_map, types = read_mat_labels(path)
        size = image_size(image)
        if inst_map.shape != size:
            raise CellDataError(
                f"{path}: inst_map is {inst_map.shape[0]}x{inst_map.shape[1]} px but {image} is "
                f"{size[0]}x{size[1]} px"
            )
        cell_classes: dict[int, int | None] = {}
        for cell in np.unique(inst_map[inst_map > 0]).tolist():
            where = f"{path}: instance id {cell}"
            if cell not in types:
                raise CellDataError(f"{where}: no type for this id (inst_type or id/class)")
            cell_classes[cell] = classes.type_index(types[cell], where)
        labels = split_by_class(inst_map, cell_classes, summary, str(path))
        yield ImportedImage(path.stem, image, labels, str(path))
