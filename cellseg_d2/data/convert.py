"""Dataset folder -> COCO JSON cache: the conversion of masks into RLE annotations.

The detectron2 dataset dicts are made from these COCO dicts in
:mod:`cellseg_d2.data.dataset_dicts`; the validation run and report of ``prepare_dataset`` are in
:mod:`cellseg_d2.data.prepare`.

Decoding hundreds of TIFFs and encoding tens of thousands of masks takes seconds to minutes, so
the result is cached under ``<root>/.cellseg_cache/`` (:data:`CACHE_DIR`, a hidden folder the
project owns; a user's own ``<root>/annotations/`` is never read or written):

- ``instances_train.json``: COCO instances (category K named by the K-th class name, for
  ``classK.tif``; image ids 1..N in folder-name order; the folder name kept in each image entry
  as ``folder``).
- ``test_images.json``: the test images with the ids of the id map; it has no ``annotations``
  key, which tells detectron2's COCOEvaluator to only save predictions.

Each file carries its cache key in ``info["cellseg"]``: :data:`CONVERSION_VERSION`, a
fingerprint over (relative path, size, mtime_ns) of every source file, ``min_area`` and the
class names. A load whose key differs rebuilds the file; a load whose key matches never touches
a TIFF. Files are written atomically, so an error mid-conversion leaves the previous cache (or
none), never half of one; a file in the cache folder that the project did not write is never
replaced (an error says so). File names inside the cache are relative to the root, so a moved
dataset keeps its cache.

The conversion runs on :data:`CONVERT_WORKERS_ENV` worker processes (default 2). A worker that
dies (the kernel's out-of-memory killer, most often) stops the conversion with an error instead
of a hang.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from cellseg_d2.data.cache import fingerprint, read_cache, write_cache
from cellseg_d2.data.limits import (
    DEFAULT_MAX_INSTANCES_PER_IMAGE,
    check_cached_instances,
    check_instance_count,
    check_max_instances,
    count_instance_ids,
)
from cellseg_d2.data.rle import label_image_to_instances
from cellseg_d2.data.validate import (
    DEFAULT_MIN_IMAGE_SIZE,
    DatasetFiles,
    TrainFolder,
    read_test_images,
    read_train_sample,
    scan_dataset,
)
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import (
    CACHE_DIR,
    DEFAULT_CLASS_NAMES,
    IMAGE_FILE_NAME,
    TEST_DIR,
    TRAIN_DIR,
    check_class_names,
    coco_categories,
)

__all__ = [
    "CONVERSION_VERSION",
    "CONVERT_WORKERS_ENV",
    "TEST_JSON_NAME",
    "TRAIN_JSON_NAME",
    "cached_test_coco",
    "cached_train_coco",
    "check_has_instances",
    "convert_workers",
    "load_test_coco",
    "load_train_coco",
]

logger = logging.getLogger(__name__)

#: Bump whenever the cache content changes for the same inputs; old caches are then rebuilt.
CONVERSION_VERSION = 2
#: File names of the two caches inside :data:`~cellseg_d2.utils.layout.CACHE_DIR`.
TRAIN_JSON_NAME = "instances_train.json"
TEST_JSON_NAME = "test_images.json"
#: Environment variable: number of conversion worker processes (default 2; 1 = no pool).
CONVERT_WORKERS_ENV = "CELLSEG_CONVERT_WORKERS"
_DEFAULT_WORKERS = 2
_POOL_MIN_IMAGES = 8  # below this, starting worker processes costs more than it saves


def _train_key(files: DatasetFiles, min_area: int, class_names: Sequence[str]) -> dict:
    """Cache key of the training annotations: version, sources, ``min_area`` and class names."""
    paths = [p for folder in files.train for p in (folder.image, *(m for _, m in folder.masks))]
    return {
        "conversion_version": CONVERSION_VERSION,
        "fingerprint": fingerprint(files.root, paths),
        "min_area": min_area,
        "class_names": list(class_names),
    }


def _test_key(files: DatasetFiles, class_names: Sequence[str]) -> dict:
    """Cache key of the test image list: version, id map and images, and class names."""
    return {
        "conversion_version": CONVERSION_VERSION,
        "fingerprint": fingerprint(files.root, [files.id_map, *files.test_images]),
        "class_names": list(class_names),
    }


def _convert_folder(job: tuple[TrainFolder, int, int, int]) -> tuple[dict, list[dict], int]:
    """Read one training folder and encode its instances (runs in a worker process).

    The instance cap is checked per mask before encoding it (so a mask of millions of ids costs
    one sort, not millions of crops) and over all masks of the image after.

    Returns:
        ``(image entry without id, annotations without ids, number of dropped instances)``.
    """
    folder, min_area, min_size, max_instances = job
    sample = read_train_sample(folder, min_size)
    annotations = []
    dropped = 0
    total, per_mask = 0, []
    for (category_id, labels), (_, path) in zip(sample.masks, folder.masks):
        check_instance_count(str(path), count_instance_ids(labels, max_instances), max_instances)
        instances = label_image_to_instances(labels)
        total += len(instances)
        per_mask.append(f"{path.name} {len(instances)}")
        detail = f"all masks together: {', '.join(per_mask)}"
        check_instance_count(str(folder.image.parent), total, max_instances, detail)
        for instance in instances:
            if instance.area < min_area:
                dropped += 1
                continue
            annotations.append(
                {
                    "category_id": category_id + 1,
                    "segmentation": instance.rle,
                    "bbox": instance.bbox,
                    "area": instance.area,
                    "iscrowd": 0,
                }
            )
    image = {
        "file_name": f"{TRAIN_DIR}/{folder.name}/{IMAGE_FILE_NAME}",
        "height": sample.height,
        "width": sample.width,
        "folder": folder.name,
    }
    return image, annotations, dropped


def convert_workers() -> int:
    """Number of conversion worker processes: ``$CELLSEG_CONVERT_WORKERS``, default 2.

    Why an environment variable: the conversion runs inside registration, which every tool
    reaches, so one variable sets it for all of them (1 turns the pool off where memory is short).

    Raises:
        CellDataError: the variable is not an integer >= 1.
    """
    value = os.environ.get(CONVERT_WORKERS_ENV, "").strip()
    if not value:
        return _DEFAULT_WORKERS
    if not value.isdigit() or int(value) < 1:
        raise CellDataError(f"${CONVERT_WORKERS_ENV}={value!r}: expected an integer >= 1")
    return int(value)


def _convert_all(
    root: Path, jobs: list[tuple[TrainFolder, int, int]]
) -> list[tuple[dict, list[dict], int]]:
    """Run :func:`_convert_folder` over all folders, on a small process pool when it pays.

    NOTE: the pool forks (where the platform can) rather than spawns: a spawned worker would
    re-import torch and detectron2 (seconds each) to run a few milliseconds of numpy per image.
    The workers touch no threads, CUDA or logging, which is what makes forking safe here, the
    same way torch's data-loader workers fork. ``ProcessPoolExecutor``, unlike
    ``multiprocessing.Pool``, notices a worker killed from outside and raises instead of waiting
    forever for its results.

    Raises:
        CellDataError: a worker process died (most likely killed for lack of memory).
    """
    workers = convert_workers()
    if (
        workers < 2
        or len(jobs) < _POOL_MIN_IMAGES
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return [_convert_folder(job) for job in jobs]
    chunk = max(1, len(jobs) // (workers * 8))
    context = multiprocessing.get_context("fork")
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(_convert_folder, jobs, chunksize=chunk))
    except BrokenProcessPool as exc:
        raise CellDataError(
            f"{root}: a conversion worker process died (most likely killed for lack of memory) "
            f"while converting {len(jobs)} training images on {workers} processes; run with "
            f"{CONVERT_WORKERS_ENV}=1 (one image in memory at a time) or free memory"
        ) from exc


def _build_train_coco(files: DatasetFiles, key: dict, min_size: int, max_instances: int) -> dict:
    """Convert every training folder into one COCO dict carrying ``key`` in its info."""
    start = time.perf_counter()
    jobs = [(folder, key["min_area"], min_size, max_instances) for folder in files.train]
    images, annotations, dropped = [], [], 0
    converted = _convert_all(files.root, jobs)
    for image_id, (image, image_annotations, image_dropped) in enumerate(converted, 1):
        images.append({"id": image_id, **image})
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
        dropped += image_dropped
    logger.info(
        "Converted %d training images (%d instances) in %.1f s; dropped %d instance(s) smaller "
        "than %d px",
        len(images),
        len(annotations),
        time.perf_counter() - start,
        dropped,
        key["min_area"],
    )
    info = {
        "description": "cellseg-d2 training annotations (cache; rebuilt when sources change)",
        "cellseg": {**key, "dropped_small": dropped},
    }
    categories = coco_categories(key["class_names"])
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def cached_train_coco(
    files: DatasetFiles,
    min_area: int,
    min_size: int,
    class_names: Sequence[str],
    max_instances: int = DEFAULT_MAX_INSTANCES_PER_IMAGE,
) -> tuple[dict, Path]:
    """The training COCO dict of scanned ``files``, from the cache or freshly converted, and the
    cache file's path.

    Why apart from :func:`load_train_coco`: ``prepare_dataset`` scans the root once and needs the
    path for its report; this is the step after the scan.

    The instance cap is checked on the masks when converting, and on the cached instances when
    the cache is read (it may have been built under a larger cap).

    Args:
        files: the result of :func:`~cellseg_d2.data.validate.scan_dataset`.
        min_area, min_size, class_names, max_instances: see :func:`load_train_coco`.

    Returns:
        ``(coco dict, path of <root>/.cellseg_cache/instances_train.json)``.

    Raises:
        CellDataError: no training images, any problem with the data, or no image holds a cell.
    """
    max_instances = check_max_instances(max_instances)
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    if not files.train:
        raise CellDataError(f"{files.root / TRAIN_DIR}: no training images")
    path = files.root / CACHE_DIR / TRAIN_JSON_NAME
    key = _train_key(files, min_area, class_names)
    coco = read_cache(path, key)
    if coco is None:
        coco = _build_train_coco(files, key, min_size, max_instances)
        check_has_instances(coco, files.root)
        write_cache(path, coco)
    else:
        check_cached_instances(coco, files.root, max_instances)
    return coco, path


def check_has_instances(coco: dict, root: str | os.PathLike) -> None:
    """Refuse training data in which no image holds a single kept instance (before caching it).

    Why: images without cells are kept as negatives (``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is
    off in the base config), but a dataset of nothing but negatives cannot train a detector;
    detectron2 would stop on an ``AssertionError`` (filtering on) or train to predict nothing.

    Raises:
        CellDataError: naming ``root`` and how many images were read.
    """
    if coco["images"] and not coco["annotations"]:
        raise CellDataError(
            f"{root}: none of the {len(coco['images'])} training images holds a cell (no "
            "classK.tif instance of at least DATASETS.MIN_INSTANCE_AREA / --min-area pixels); "
            "check the masks and the class names"
        )


def load_train_coco(
    root: str | os.PathLike,
    min_area: int = 4,
    min_size: int = DEFAULT_MIN_IMAGE_SIZE,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    max_instances: int = DEFAULT_MAX_INSTANCES_PER_IMAGE,
) -> dict:
    """The training annotations as a COCO dict, converting the folder only when needed.

    Why a separate step from the dataset dicts: the split writer and the statistics need the COCO
    form (int image ids, 1-based categories) that COCOEvaluator reads.

    Args:
        root: dataset root holding ``train/``.
        min_area: instances with fewer pixels are dropped (part of the cache key).
        min_size: smallest accepted image side, checked when converting (not part of the key).
        class_names: name K is the class of ``classK.tif`` (part of the cache key).
        max_instances: most instance ids per image (``DATASETS.MAX_INSTANCES_PER_IMAGE``).

    Returns:
        The COCO dict of ``<root>/.cellseg_cache/instances_train.json``.

    Raises:
        CellDataError: any problem with the data, naming the file; no image holds a cell.
    """
    class_names = check_class_names(class_names)
    files = scan_dataset(root, class_names)
    return cached_train_coco(files, min_area, min_size, class_names, max_instances)[0]


def cached_test_coco(
    files: DatasetFiles, min_size: int, class_names: Sequence[str]
) -> tuple[dict, Path]:
    """The test COCO dict (images only) of scanned ``files``, cached like the training one, and
    the cache file's path (see :func:`cached_train_coco` for why apart from the loader).

    Raises:
        CellDataError: no test set (folder or id map missing), or an id-map or image problem.
    """
    if files.test_images is None or files.id_map is None:
        raise CellDataError(f"{files.root / TEST_DIR}: no test set (folder or id map missing)")
    path = files.root / CACHE_DIR / TEST_JSON_NAME
    key = _test_key(files, class_names)
    coco = read_cache(path, key)
    if coco is None:
        entries = read_test_images(files, min_size)
        images = [
            {
                "id": entry["id"],
                "file_name": f"{TEST_DIR}/{entry['file_name']}",
                "height": entry["height"],
                "width": entry["width"],
            }
            for entry in entries
        ]
        info = {"description": "cellseg-d2 test images (ids from the id map)", "cellseg": key}
        coco = {"info": info, "images": images, "categories": coco_categories(class_names)}
        write_cache(path, coco)
        logger.info("Listed %d test images in %s", len(images), path)
    return coco, path


def load_test_coco(
    root: str | os.PathLike,
    min_size: int = DEFAULT_MIN_IMAGE_SIZE,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> dict:
    """The test images as a COCO dict without ``annotations``, ids from the id map.

    Why: the test split's ``json_file`` for detectron2's COCOEvaluator, which then only saves
    predictions; the ids are the ones a submission must use.

    Args:
        root: dataset root holding ``test_release/`` and ``test_image_name_to_ids.json``.
        min_size: smallest accepted image side in pixels.
        class_names: the categories of the dict.

    Raises:
        CellDataError: no test set, or an id-map or image problem, naming the file.
    """
    class_names = check_class_names(class_names)
    return cached_test_coco(scan_dataset(root, class_names), min_size, class_names)[0]
