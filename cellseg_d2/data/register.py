"""Register the cell dataset's splits in detectron2's DatasetCatalog and MetadataCatalog.

Nothing registers at import time: the tools call :func:`register_cell_datasets_from_config` in
``setup()``, and tests register a synthetic root and pop the names afterwards.

Splits (``<prefix>_`` + name):

- ``trainval``: every training image.
- ``train`` / ``val``: a split of ``trainval`` by a hash of each folder name
  (:func:`~cellseg_d2.data.splits.split_of`), with optional cross-validation folds.
- ``test``: the images of ``test_release/`` with the ids of the id map (no annotations); only
  when ``test_release/`` exists.

Registration does the file work, once and in plain sight: it loads the conversion cache
(converting the folder when the cache is missing or stale) and writes each split's COCO JSON,
the ``json_file`` COCOEvaluator reads. The catalog functions it registers only read those files,
so asking the catalog for a dataset never writes anything, and the dataset dicts always match
their ``json_file``. The class names (``DATASETS.CLASS_NAMES``) become ``thing_classes``;
``classK.tif`` is class K.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from cellseg_d2.data.convert import (
    TEST_JSON_NAME,
    TRAIN_JSON_NAME,
    load_test_coco,
    load_train_coco,
)
from cellseg_d2.data.dataset_dicts import coco_to_test_dicts, coco_to_train_dicts
from cellseg_d2.data.limits import DEFAULT_MAX_INSTANCES_PER_IMAGE, check_max_instances
from cellseg_d2.data.splits import (
    assign_splits,
    check_split_args,
    split_json_name,
    write_coco_subset,
)
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import (
    CACHE_DIR,
    DEFAULT_CLASS_NAMES,
    TEST_DIR,
    TRAIN_DIR,
    check_class_names,
    class_colors,
)

__all__ = [
    "check_num_classes",
    "count_train_images",
    "register_cell_datasets",
    "register_cell_datasets_from_config",
]

logger = logging.getLogger(__name__)


def check_num_classes(cfg: CfgNode) -> tuple[str, ...]:
    """Check that the model head has one output per configured class name.

    Why: a head with more outputs than classes wastes capacity and can predict a category that
    no class file has; one with fewer fails deep inside detectron2's loss with an index error.

    Returns:
        ``DATASETS.CLASS_NAMES`` as a checked tuple.

    Raises:
        CellDataError: invalid class names, or ``MODEL.ROI_HEADS.NUM_CLASSES`` differs from
            their count (both keys named).
    """
    names = check_class_names(list(cfg.DATASETS.CLASS_NAMES))
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    if num_classes != len(names):
        raise CellDataError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes} but DATASETS.CLASS_NAMES lists "
            f"{len(names)} class(es) {list(names)}; set both to the same number of classes"
        )
    return names


def _read_registered(path: Path, expected_key: dict | None) -> dict:
    """Read a COCO file that registration wrote or confirmed, as it was then.

    ``expected_key`` is the file's ``info["cellseg"]`` at registration, for the cache files that
    every registration of the root shares (another registration with other class names or
    ``min_area`` rewrites them); None for the split files, whose names encode their settings.

    Raises:
        CellDataError: the file is gone, unreadable or was rewritten since registration.
    """
    again = "register the datasets again (registration writes it)"
    try:
        with open(path, encoding="utf-8") as handle:
            coco = json.load(handle)
    except FileNotFoundError:
        raise CellDataError(f"{path}: missing; {again}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CellDataError(f"{path}: unreadable ({exc}); {again}") from exc
    info = coco.get("info") if isinstance(coco, dict) else None
    key = info.get("cellseg") if isinstance(info, dict) else None
    if key is None or (expected_key is not None and key != expected_key):
        raise CellDataError(
            f"{path}: rewritten since the datasets were registered (other data, class names or "
            f"min area); {again}"
        )
    return coco


def _loader(
    path: Path,
    expected_key: dict | None,
    to_dicts: Callable[[dict, str], list[dict]],
    root: str,
    split: str,
) -> Callable[[], list[dict]]:
    """The catalog function of one split: read its COCO file, turn it into dataset dicts."""

    def load() -> list[dict]:
        dicts = to_dicts(_read_registered(path, expected_key), root)
        logger.info("%s: %d images from %s", split, len(dicts), root)
        return dicts

    return load


def _train_splits(
    root: str,
    split_args: dict,
    min_area: int,
    class_names: tuple[str, ...],
    max_instances: int,
) -> dict[str, tuple[Path, Callable[[], list[dict]]]]:
    """Load (or convert) the training cache and write the ``train`` and ``val`` split files.

    Returns:
        ``{split: (json_file, catalog function)}`` for ``train``, ``val`` and ``trainval``.
    """
    cache = Path(root) / CACHE_DIR
    coco = load_train_coco(root, min_area, class_names=class_names, max_instances=max_instances)
    folders = [image["folder"] for image in coco["images"]]
    assigned = assign_splits(folders, **split_args, source=root)
    splits = {}
    for split in ("train", "val"):
        ids = [image["id"] for image, name in zip(coco["images"], assigned) if name == split]
        path = cache / split_json_name(
            split, **split_args, min_area=min_area, class_names=class_names
        )
        write_coco_subset(coco, ids, path)
        splits[split] = (path, _loader(path, None, coco_to_train_dicts, root, split))
    trainval = cache / TRAIN_JSON_NAME
    key = coco["info"]["cellseg"]
    splits["trainval"] = (trainval, _loader(trainval, key, coco_to_train_dicts, root, "trainval"))
    return splits


def _register(name: str, loader: Callable[[], list[dict]], **metadata: object) -> None:
    """Register ``name``, replacing an earlier registration of the same name."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_cell_datasets(
    root: str | os.PathLike,
    prefix: str = "cells",
    val_fraction: float = 0.1,
    seed: int = 0,
    fold: int | None = None,
    num_folds: int | None = None,
    min_area: int = 4,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    max_instances: int = DEFAULT_MAX_INSTANCES_PER_IMAGE,
) -> list[str]:
    """Register ``<prefix>_train``, ``_val``, ``_trainval`` and (with a test set) ``_test``.

    Registering again (same or other arguments) replaces the earlier registration, so tools and
    tests can call it freely. Registration loads the conversion caches (converting the folder
    on first use, which decodes every training and test image once) and writes the ``train`` and
    ``val`` COCO files under ``<root>/.cellseg_cache/``, whose names encode the split arguments,
    so different splits never share a file; a file that already holds the right content is
    left alone. The catalog functions only read these files.

    Metadata of every split: ``thing_classes`` (``class_names``), ``thing_colors``,
    ``thing_dataset_id_to_contiguous_id`` ({1: 0, ..., N: N - 1}, which COCOEvaluator needs to
    map predictions back to the COCO ids), ``evaluator_type="coco"``, ``json_file``,
    ``image_root`` and ``root``.

    Args:
        root: dataset root (``train/``, ``test_release/``, ``test_image_name_to_ids.json``).
        prefix: dataset name prefix.
        val_fraction: share of training images in ``val`` when folds are off.
        seed: split seed.
        fold: the fold used as ``val`` (with ``num_folds``).
        num_folds: number of cross-validation folds; None or 0 disables folds.
        min_area: instances with fewer pixels are dropped at conversion.
        class_names: name K is the class of ``classK.tif``; a ``classK.tif`` with K above their
            count is an error.
        max_instances: a training image with more instance ids is an error (see
            :func:`~cellseg_d2.data.limits.check_instance_count`).

    Returns:
        The registered dataset names.

    Raises:
        ValueError: invalid split arguments.
        CellDataError: ``root`` holds neither ``train/`` nor ``test_release/``; invalid
            class names; any problem with the data (naming the file), or no training image
            holds a cell. Nothing is registered then.
    """
    # Long for its docstring: the code is one short pass (check, convert, register).
    class_names = check_class_names(class_names)
    max_instances = check_max_instances(max_instances)
    num_folds = num_folds or None
    check_split_args(val_fraction, fold, num_folds)
    root_path = Path(root).resolve()
    root = str(root_path)
    has_train = (root_path / TRAIN_DIR).is_dir()
    has_test = (root_path / TEST_DIR).is_dir()
    if not has_train and not has_test:
        raise CellDataError(f"{root}: holds neither {TRAIN_DIR}/ nor {TEST_DIR}/")
    # All file work first, so that bad data register nothing.
    splits: dict[str, tuple[Path, Callable[[], list[dict]], Path]] = {}
    if has_train:
        split_args = {"val_fraction": val_fraction, "seed": seed, "fold": fold}
        split_args["num_folds"] = num_folds
        for split, (path, loader) in _train_splits(
            root, split_args, min_area, class_names, max_instances
        ).items():
            splits[split] = (path, loader, root_path / TRAIN_DIR)
    if has_test:
        coco = load_test_coco(root, class_names=class_names)
        path = root_path / CACHE_DIR / TEST_JSON_NAME
        loader = _loader(path, coco["info"]["cellseg"], coco_to_test_dicts, root, "test")
        splits["test"] = (path, loader, root_path / TEST_DIR)
    common = {
        "thing_classes": list(class_names),
        "thing_colors": class_colors(len(class_names)),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(class_names))},
        "evaluator_type": "coco",
        "root": root,
    }
    names = []
    for split, (path, loader, image_root) in splits.items():
        name = f"{prefix}_{split}"
        _register(name, loader, json_file=str(path), image_root=str(image_root), **common)
        names.append(name)
    logger.info("Registered %s from %s", ", ".join(names), root)
    return names


def register_cell_datasets_from_config(cfg: CfgNode, prefix: str = "cells") -> list[str]:
    """Register the cell datasets as the config's ``DATASETS.*`` keys describe.

    Why: the one call the tools make in ``setup()``; it reads ``CELLS_ROOT``, ``VAL_FRACTION``,
    ``SPLIT_SEED``, ``NUM_FOLDS`` (0 = no folds), ``FOLD``, ``MIN_INSTANCE_AREA``,
    ``MAX_INSTANCES_PER_IMAGE`` and ``CLASS_NAMES``, and checks
    ``MODEL.ROI_HEADS.NUM_CLASSES`` against the class names.

    Args:
        cfg: a config extended by :func:`cellseg_d2.config.add_cellseg_config`.
        prefix: dataset name prefix, matching the names in ``DATASETS.TRAIN``/``TEST``.

    Returns:
        The registered dataset names.

    Raises:
        CellDataError: see :func:`check_num_classes` and :func:`register_cell_datasets`.
    """
    class_names = check_num_classes(cfg)
    datasets = cfg.DATASETS
    num_folds = int(datasets.NUM_FOLDS)
    return register_cell_datasets(
        datasets.CELLS_ROOT,
        prefix=prefix,
        val_fraction=float(datasets.VAL_FRACTION),
        seed=int(datasets.SPLIT_SEED),
        fold=int(datasets.FOLD) if num_folds else None,
        num_folds=num_folds or None,
        min_area=int(datasets.MIN_INSTANCE_AREA),
        class_names=class_names,
        max_instances=datasets.MAX_INSTANCES_PER_IMAGE,
    )


def count_train_images(cfg: CfgNode) -> int:
    """The number of images in the config's registered ``DATASETS.TRAIN``.

    Why here: :func:`cellseg_d2.config.build_config` turns ``SOLVER.EPOCHS`` into iterations
    from this count, and the config floor may not read data; the training tool hands it this
    function after registering the datasets.
    """
    return sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
