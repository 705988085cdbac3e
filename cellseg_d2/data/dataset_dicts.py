"""COCO dicts -> detectron2 dataset dicts: the form ``DatasetCatalog`` hands to the mapper.

Why apart from the conversion (:mod:`cellseg_d2.data.convert`): the COCO form is what the cache,
the split writer and COCOEvaluator read; the dataset dicts are detectron2's per-image view of it
(absolute file names, 0-based categories, ``bbox_mode``), made without touching a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from detectron2.structures import BoxMode

from cellseg_d2.data.convert import load_test_coco, load_train_coco
from cellseg_d2.data.limits import DEFAULT_MAX_INSTANCES_PER_IMAGE
from cellseg_d2.data.validate import DEFAULT_MIN_IMAGE_SIZE
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES

__all__ = [
    "coco_to_test_dicts",
    "coco_to_train_dicts",
    "load_cell_test_dicts",
    "load_cell_train_dicts",
]


def coco_to_train_dicts(coco: dict, root: str | os.PathLike) -> list[dict]:
    """Turn a training COCO dict into detectron2 dataset dicts (no file access).

    Each dict has ``file_name`` (absolute), ``image_id`` (the COCO int id, which COCOEvaluator
    matches against ``json_file``), ``height``, ``width``, ``folder`` and ``annotations`` with
    ``bbox`` (XYWH_ABS), ``bbox_mode``, 0-based ``category_id``, ``segmentation`` (compressed RLE,
    str counts), ``iscrowd`` and ``area``.

    NOTE: the RLE dicts are shared with ``coco``, not copied; detectron2's mapper deep-copies
    each dataset dict before changing it.
    """
    root = os.path.abspath(root)
    per_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        per_image[annotation["image_id"]].append(
            {
                "bbox": annotation["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": annotation["category_id"] - 1,
                "segmentation": annotation["segmentation"],
                "iscrowd": annotation["iscrowd"],
                "area": annotation["area"],
            }
        )
    return [
        {
            "file_name": os.path.join(root, image["file_name"]),
            "image_id": image["id"],
            "height": image["height"],
            "width": image["width"],
            "folder": image["folder"],
            "annotations": per_image[image["id"]],
        }
        for image in coco["images"]
    ]


def coco_to_test_dicts(coco: dict, root: str | os.PathLike) -> list[dict]:
    """Turn the test COCO dict into detectron2 dataset dicts without annotations.

    ``image_id`` is the id-map id, the one a submission must use.
    """
    root = os.path.abspath(root)
    return [
        {
            "file_name": os.path.join(root, image["file_name"]),
            "image_id": image["id"],
            "height": image["height"],
            "width": image["width"],
        }
        for image in coco["images"]
    ]


def load_cell_train_dicts(
    root: str | os.PathLike,
    min_area: int = 4,
    min_size: int = DEFAULT_MIN_IMAGE_SIZE,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    max_instances: int = DEFAULT_MAX_INSTANCES_PER_IMAGE,
) -> list[dict]:
    """Load all training images of a dataset root as detectron2 dataset dicts.

    The first call converts the folder (a few seconds per hundred images, on two processes) and
    writes the cache; later calls read the cache (well under a second) unless a source file,
    ``min_area`` or :data:`~cellseg_d2.data.convert.CONVERSION_VERSION` changed. The dicts hold
    paths and RLE, never pixels, so they are cheap to pickle into data-loader workers.

    Args:
        root: dataset root holding ``train/<id>/image.tif`` and ``class1..N.tif``.
        min_area: instances with fewer pixels are dropped; the count is logged.
        min_size: smallest accepted image side in pixels.
        class_names: name K is the class of ``classK.tif``.
        max_instances: most instance ids per image (``DATASETS.MAX_INSTANCES_PER_IMAGE``).

    Returns:
        One dict per training image in folder-name order; see :func:`coco_to_train_dicts`.

    Raises:
        CellDataError: any problem with the data, naming the file.
    """
    coco = load_train_coco(root, min_area, min_size, class_names, max_instances)
    return coco_to_train_dicts(coco, root)


def load_cell_test_dicts(
    root: str | os.PathLike,
    min_size: int = DEFAULT_MIN_IMAGE_SIZE,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> list[dict]:
    """Load the test images as detectron2 dataset dicts whose ``image_id`` is the id-map id.

    Raises:
        CellDataError: no test set, or an id-map or image problem, naming the file.
    """
    return coco_to_test_dicts(load_test_coco(root, min_size, class_names), root)
