"""Which training images form the ``train`` and ``val`` splits, and each split's COCO file.

``train`` / ``val`` split the training images by a hash of each folder name, so the split is the
same on every machine and an image added later never moves the others. With ``num_folds`` the
val set is fold ``fold`` of a ``num_folds``-way partition built from the same hash.

Each split is written as its own COCO JSON (:func:`write_coco_subset`) next to the conversion
cache, because detectron2's COCOEvaluator reads ground truth from a file (``json_file``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from cellseg_d2.data.cache import read_cache, write_cache

__all__ = [
    "assign_splits",
    "check_split_args",
    "split_json_name",
    "split_of",
    "write_coco_subset",
]

logger = logging.getLogger(__name__)


def _hash_fraction(seed: int, name: str) -> float:
    """Map ``(seed, name)`` to [0, 1) uniformly and reproducibly (unlike Python's ``hash``)."""
    digest = hashlib.sha1(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_split_args(val_fraction: float, fold: int | None, num_folds: int | None) -> None:
    """Raise ``ValueError`` for split arguments that cannot work.

    Why separate: registration checks them before it reads or writes anything.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1), ``fold`` without ``num_folds``,
            ``num_folds`` < 2, or ``fold`` outside ``0..num_folds - 1``.
    """
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
    check_split_args(val_fraction, fold, num_folds)
    position = _hash_fraction(seed, name)
    if num_folds is None:
        return "val" if position < val_fraction else "train"
    return "val" if int(position * num_folds) == fold else "train"


def assign_splits(
    folders: Sequence[str],
    val_fraction: float = 0.1,
    seed: int = 0,
    fold: int | None = None,
    num_folds: int | None = None,
    source: str | os.PathLike = "",
) -> list[str]:
    """The split (``"train"`` or ``"val"``) of each training folder, as :func:`split_of` says,
    except that a dataset falling entirely into val trains on every image.

    Why the exception: a tiny dataset can hash entirely into val, and training needs at least
    one image; it then trains on all of them with no validation set (logged as a warning).

    Args:
        folders: training folder names.
        val_fraction, seed, fold, num_folds: see :func:`split_of`.
        source: the dataset root, named in the warning.

    Returns:
        One split name per folder, in order.
    """
    splits = [split_of(name, val_fraction, seed, fold, num_folds) for name in folders]
    if splits and "train" not in splits:
        logger.warning(
            "every image of %s fell into the validation split: training on all %d "
            "images, with no validation set",
            source,
            len(splits),
        )
        splits = ["train"] * len(splits)
    return splits


def split_json_name(
    split: str,
    val_fraction: float,
    seed: int,
    fold: int | None,
    num_folds: int | None,
    min_area: int,
    class_names: Sequence[str],
) -> str:
    """File name of a split's COCO JSON: ``instances_<split>_<tag>.json``.

    Why a tag: the name encodes every argument that changes the split's content (split
    arguments, ``min_area``, class names), so different splits never share a file.
    """
    tag_args = {
        "val_fraction": val_fraction,
        "seed": seed,
        "fold": fold,
        "num_folds": num_folds,
        "min_area": min_area,
        "class_names": list(class_names),
    }
    tag = hashlib.sha1(json.dumps(tag_args).encode()).hexdigest()
    return f"instances_{split}_{tag[:10]}.json"


def write_coco_subset(coco: dict, image_ids: Collection[int], path: str | os.PathLike) -> Path:
    """Write the images ``image_ids`` of ``coco`` with their annotations as a COCO JSON.

    Why: a validation split needs its own ``json_file`` so COCOEvaluator reads ground truth
    instead of converting the dataset dicts again. Ids are kept, so predictions made on the
    split's dataset dicts match. The file is left alone when it already holds exactly this
    subset of this source, so repeated registrations do not rewrite it.

    Args:
        coco: a COCO dict from :func:`~cellseg_d2.data.convert.load_train_coco`.
        image_ids: COCO image ids to keep.
        path: destination JSON.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    keep = set(image_ids)
    source = coco.get("info", {}).get("cellseg", {})
    key = {
        "source_fingerprint": source.get("fingerprint"),
        "source_min_area": source.get("min_area"),
        "source_class_names": source.get("class_names"),
        "conversion_version": source.get("conversion_version"),
        "image_ids_sha1": hashlib.sha1(json.dumps(sorted(keep)).encode()).hexdigest(),
    }
    if read_cache(path, key) is not None:
        return path
    subset = {
        "info": {"description": "cellseg-d2 split of instances_train.json", "cellseg": key},
        "images": [image for image in coco["images"] if image["id"] in keep],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
        "categories": coco["categories"],
    }
    write_cache(path, subset)
    return path
