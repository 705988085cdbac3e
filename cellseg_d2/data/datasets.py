"""Register the cell dataset's splits in detectron2's DatasetCatalog and MetadataCatalog.

Nothing registers at import time: the tools call :func:`register_cell_datasets_from_config` in
``setup()``, and tests register a synthetic root and pop the names afterwards.

Splits (``<prefix>_`` + name):

- ``trainval``: every training image.
- ``train`` / ``val``: a split of ``trainval`` by a hash of each folder name, so it is the same
  on every machine and an image added later never moves the others. With ``num_folds`` the val
  set is fold ``fold`` of a ``num_folds``-way partition built from the same hash.
- ``test``: the images of ``test_release/`` with the ids of the id map (no annotations); only
  when ``test_release/`` exists.

Registration is lazy: the catalog functions read the conversion cache (converting on first use).
The class names (``DATASETS.CLASS_NAMES``) become ``thing_classes``; ``classK.tif`` is class K.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from cellseg_d2.data.convert import (
    CACHE_DIR,
    TEST_JSON_NAME,
    TRAIN_JSON_NAME,
    coco_to_train_dicts,
    load_cell_test_dicts,
    load_train_coco,
    write_coco_subset,
)
from cellseg_d2.data.io import DEFAULT_CLASS_NAMES, CellDataError, check_class_names
from cellseg_d2.data.limits import DEFAULT_MAX_INSTANCES_PER_IMAGE, check_max_instances
from cellseg_d2.data.validate import TEST_DIR, TRAIN_DIR

__all__ = [
    "THING_CLASSES",
    "THING_COLORS",
    "check_num_classes",
    "class_colors",
    "register_cell_datasets",
    "register_cell_datasets_from_config",
    "split_of",
]

logger = logging.getLogger(__name__)

#: Numbered labels of the four default classes, for the tools that read no config (submission
#: checks, figures); registered datasets carry the configured names in ``thing_classes``.
THING_CLASSES: list[str] = [f"class{k}" for k in range(1, len(DEFAULT_CLASS_NAMES) + 1)]
#: One clearly distinct RGB colour per class for visualizations (the first four classes).
THING_COLORS: list[tuple[int, int, int]] = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
]


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """``num_classes`` distinct RGB colours: :data:`THING_COLORS`, then hues spread evenly.

    Why: ``thing_colors`` must have one entry per class, and any number of classes is allowed.
    """
    extra = num_classes - len(THING_COLORS)
    colors = list(THING_COLORS[:num_classes])
    for k in range(max(extra, 0)):
        # Golden-ratio hue steps keep successive colours far apart on the colour wheel.
        red, green, blue = colorsys.hsv_to_rgb((0.11 + 0.618 * k) % 1.0, 0.75, 0.9)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


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


def _hash_fraction(seed: int, name: str) -> float:
    """Map ``(seed, name)`` to [0, 1) uniformly and reproducibly (unlike Python's ``hash``)."""
    digest = hashlib.sha1(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_split_args(val_fraction: float, fold: int | None, num_folds: int | None) -> None:
    """Raise ``ValueError`` for split arguments that cannot work."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if num_folds is None:
        if fold is not None:
            raise ValueError(f"fold={fold} needs num_folds")
        return
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2 (or None to disable folds), got {num_folds}")
    if fold is None or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in 0..{num_folds - 1} for num_folds={num_folds}: {fold}")


def split_of(
    name: str,
    val_fraction: float = 0.1,
    seed: int = 0,
    fold: int | None = None,
    num_folds: int | None = None,
) -> str:
    """Say whether the training folder ``name`` belongs to ``"train"`` or ``"val"``.

    Why a hash of the name and not a shuffle of the list: the decision for one image depends on
    that image alone, so adding or removing images never moves the others between splits.

    Args:
        name: training folder name.
        val_fraction: share of images in val (about; exact only for large sets). Ignored with
            folds.
        seed: changes the split.
        fold: with ``num_folds``, the fold used as val.
        num_folds: number of folds; fold ``k`` holds the images whose hash falls in
            ``[k / num_folds, (k + 1) / num_folds)``, so the folds partition the data.

    Returns:
        ``"train"`` or ``"val"``.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1), ``num_folds`` < 2, or ``fold`` out of range.
    """
    _check_split_args(val_fraction, fold, num_folds)
    position = _hash_fraction(seed, name)
    if num_folds is None:
        return "val" if position < val_fraction else "train"
    return "val" if int(position * num_folds) == fold else "train"


def _split_loader(
    root: str,
    split: str,
    split_args: dict,
    min_area: int,
    class_names: tuple[str, ...],
    json_file: Path,
    max_instances: int,
) -> Callable[[], list[dict]]:
    """The catalog function of ``train``, ``val`` or ``trainval``: cache -> dicts -> split.

    It also (re)writes the split's ``json_file`` when the data changed, before returning, so
    COCOEvaluator, which detectron2 builds after the data loader, reads matching ground truth.
    Data without a single instance raise :class:`CellDataError` (see
    :func:`~cellseg_d2.data.convert.check_has_instances`), before detectron2 sees them.
    """

    def load() -> list[dict]:
        coco = load_train_coco(root, min_area, class_names=class_names, max_instances=max_instances)
        dicts = coco_to_train_dicts(coco, root)
        if split != "trainval":
            splits = [split_of(d["folder"], **split_args) for d in dicts]
            if dicts and "train" not in splits:
                # A tiny dataset can hash entirely into val; training needs at least one image.
                logger.warning(
                    "every image of %s fell into the validation split: training on all %d "
                    "images, with no validation set",
                    root,
                    len(dicts),
                )
                splits = ["train"] * len(dicts)
            dicts = [d for d, name in zip(dicts, splits) if name == split]
            write_coco_subset(coco, [d["image_id"] for d in dicts], json_file)
        logger.info("%s: %d images from %s", split, len(dicts), root)
        return dicts

    return load


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
    tests can call it freely. Nothing is read until a dataset is requested from the catalog.

    Metadata of every split: ``thing_classes`` (``class_names``), ``thing_colors``,
    ``thing_dataset_id_to_contiguous_id`` ({1: 0, ..., N: N - 1}, which COCOEvaluator needs to
    map predictions back to the COCO ids), ``evaluator_type="coco"``, ``json_file``,
    ``image_root`` and ``root``. The ``json_file`` of ``train``/``val`` is written under
    ``<root>/.cellseg_cache/`` when the split is first loaded; its name encodes the split
    arguments, so different splits never share a file.

    Args:
        root: dataset root (``train/``, ``test_release/``, ``test_image_name_to_ids.json``).
        prefix: dataset name prefix.
        val_fraction: share of training images in ``val`` when folds are off.
        seed: split seed.
        fold: the fold used as ``val`` (with ``num_folds``).
        num_folds: number of cross-validation folds; None or 0 disables folds.
        min_area: instances with fewer pixels are dropped at conversion.
        class_names: name K is the class of ``classK.tif``; a ``classK.tif`` with K above their
            count is an error when the data are loaded.
        max_instances: a training image with more instance ids is an error when the data are
            loaded (see :func:`~cellseg_d2.data.limits.check_instance_count`).

    Returns:
        The registered dataset names.

    Raises:
        ValueError: invalid split arguments.
        CellDataError: ``root`` holds neither ``train/`` nor ``test_release/``; invalid
            class names or ``max_instances``.
    """
    class_names = check_class_names(class_names)
    max_instances = check_max_instances(max_instances)
    num_folds = num_folds or None
    _check_split_args(val_fraction, fold, num_folds)
    root_path = Path(root).resolve()
    root = str(root_path)
    has_train = (root_path / TRAIN_DIR).is_dir()
    has_test = (root_path / TEST_DIR).is_dir()
    if not has_train and not has_test:
        raise CellDataError(f"{root}: holds neither {TRAIN_DIR}/ nor {TEST_DIR}/")
    annotations = root_path / CACHE_DIR
    common = {
        "thing_classes": list(class_names),
        "thing_colors": class_colors(len(class_names)),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(class_names))},
        "evaluator_type": "coco",
        "root": root,
    }
    names = []
    if has_train:
        split_args = {
            "val_fraction": val_fraction,
            "seed": seed,
            "fold": fold,
            "num_folds": num_folds,
        }
        tag_args = {**split_args, "min_area": min_area, "class_names": list(class_names)}
        tag = hashlib.sha1(json.dumps(tag_args).encode()).hexdigest()
        for split in ("train", "val", "trainval"):
            json_file = annotations / (
                TRAIN_JSON_NAME if split == "trainval" else f"instances_{split}_{tag[:10]}.json"
            )
            name = f"{prefix}_{split}"
            _register(
                name,
                _split_loader(
                    root, split, split_args, min_area, class_names, json_file, max_instances
                ),
                json_file=str(json_file),
                image_root=str(root_path / TRAIN_DIR),
                **common,
            )
            names.append(name)
    if has_test:
        name = f"{prefix}_test"
        _register(
            name,
            lambda: load_cell_test_dicts(root, class_names=class_names),
            json_file=str(annotations / TEST_JSON_NAME),
            image_root=str(root_path / TEST_DIR),
            **common,
        )
        names.append(name)
    logger.info("Registered %s from %s", ", ".join(names), root)
    return names


def register_cell_datasets_from_config(cfg: CfgNode, prefix: str = "cells") -> list[str]:
    """Register the cell datasets as the config's ``DATASETS.*`` keys describe.

    Why: the one call the tools make in ``setup()``; it reads ``CELLS_ROOT``, ``VAL_FRACTION``,
    ``SPLIT_SEED``, ``NUM_FOLDS`` (0 = no folds), ``FOLD``, ``MIN_INSTANCE_AREA``,
    ``MAX_INSTANCES_PER_IMAGE`` and ``CLASS_NAMES``, and checks ``MODEL.ROI_HEADS.NUM_CLASSES``
    against the class names.

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
