"""Dataset statistics and the config values they suggest.

Cell images break detectron2's COCO defaults in two places: cells are far smaller than COCO
objects (anchors of 32..512 px miss them), and an image can hold hundreds of them (the default
``TEST.DETECTIONS_PER_IMAGE = 100`` silently caps recall). The statistics here are computed from
the conversion cache (no TIFF is read when it is fresh) and turned into those settings. Classes
are reported by their names (``DATASETS.CLASS_NAMES``), with a note for each class too rare to
learn from.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog

from cellseg_d2.config.scale import scale_for_diameter
from cellseg_d2.data.convert import load_train_coco
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES

__all__ = [
    "RECOMMENDED_CELL_DIAMETER",
    "compute_dataset_stats",
    "equivalent_diameters",
    "format_stats",
    "median_train_diameter",
    "stats_from_coco",
    "write_stats_json",
]

_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_FPN_LEVELS = 5  # P2..P6 in detectron2's FPN: one anchor size per level
_DETECTION_MARGIN = 1.2  # test images may be denser than the densest training image
_DEFAULT_TOPK = 1000  # detectron2's FPN default for the RPN top-k at test time
_RARE_SHARE = 0.01  # a class with fewer than this share of the instances gets a note
#: The INPUT.CELL_DIAMETER the advice suggests: the middle of the cell anchors (8..128 px, one
#: per FPN level), so cells half and four times the median still have an anchor.
RECOMMENDED_CELL_DIAMETER = 32.0


def equivalent_diameters(areas: Sequence[float] | np.ndarray) -> np.ndarray:
    """The diameter of the disc of each area (``2 sqrt(area / pi)``), in pixels.

    Why one function: the statistics report and the input scale measure cells the same way.
    """
    return 2.0 * np.sqrt(np.asarray(areas, np.float64) / np.pi)


def median_train_diameter(cfg: CfgNode) -> float:
    """The median equivalent diameter of the instances of the registered ``DATASETS.TRAIN``.

    Why from the registered dicts: they are the images the model trains on (the train split,
    not the held-out ones), and their annotations carry each instance's ``area`` from the
    conversion cache, so no mask is decoded. Crowd annotations are left out, as in training.
    Hand it to :func:`cellseg_d2.config.finish_config` as ``train_diameter``.

    Returns:
        The median in pixels; NaN when the datasets hold no instance (the config floor refuses
        it with the key named).
    """
    areas = [
        float(annotation["area"])
        for name in cfg.DATASETS.TRAIN
        for record in DatasetCatalog.get(name)
        for annotation in record.get("annotations", ())
        if not annotation.get("iscrowd", 0)
    ]
    return float(np.median(equivalent_diameters(areas))) if areas else float("nan")


def _distribution(values: Sequence[float]) -> dict | None:
    """Count, mean, min, max and percentiles of ``values``; None when empty."""
    if len(values) == 0:
        return None
    data = np.asarray(values, dtype=np.float64)
    summary = {"count": int(data.size), "mean": float(data.mean()), "min": float(data.min())}
    summary.update({f"p{q}": float(np.percentile(data, q)) for q in _PERCENTILES})
    summary["max"] = float(data.max())
    return summary


def _class_notes(per_class: dict[str, int]) -> list[str]:
    """One note per class without instances or with under 1% of them: the head sees too few."""
    total = sum(per_class.values())
    notes = []
    for name, count in per_class.items():
        if count == 0:
            notes.append(f"class {name!r} has no instance: the model cannot learn it")
        elif count < _RARE_SHARE * total:
            notes.append(
                f"class {name!r} is rare ({count} of {total} instances); consider "
                "DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler"
            )
    return notes


def _scale_advice(sides: np.ndarray, advice: dict, notes: list[str]) -> None:
    """The ``INPUT.CELL_DIAMETER`` to train with, the scale it gives and whether the scaled
    sides fit the cell anchors (8..128 px), added to ``advice`` and ``notes``."""
    median = float(np.median(equivalent_diameters(sides**2)))
    scale = scale_for_diameter(RECOMMENDED_CELL_DIAMETER, median)
    advice["INPUT.CELL_DIAMETER"] = RECOMMENDED_CELL_DIAMETER
    advice["input_scale_at_cell_diameter"] = round(scale, 4)
    low, high = (float(np.percentile(sides, q)) * scale for q in (1, 99))
    fits = "within" if low >= 8 and high <= 128 else "NOT within"
    notes.append(
        f"INPUT.CELL_DIAMETER {RECOMMENDED_CELL_DIAMETER:g} resizes images by {scale:.3f} "
        f"(median diameter {median:.1f} px); instance sides p1..p99 then span {low:.1f}.."
        f"{high:.1f} px, {fits} the cell anchors 8..128 px of configs/Base-CellSeg-RCNN-FPN.yaml"
    )


def _advice(sides: np.ndarray, densest: int, per_class: dict[str, int]) -> dict:
    """Anchor sizes covering the instance sides, the input scale that brings cells to the
    recommended diameter, test-time budgets above the densest image, and a note for each class
    too rare to learn."""
    advice: dict = {}
    notes = _class_notes(per_class)
    if sides.size:
        _scale_advice(sides, advice, notes)
        low = 2 ** math.floor(math.log2(max(float(np.percentile(sides, 1)), 1.0)))
        high = 2 ** math.ceil(math.log2(max(float(np.percentile(sides, 99)), 1.0)))
        covering = [low * 2**k for k in range(int(math.log2(high // low)) + 1)]
        levels = [low * 2**k for k in range(_FPN_LEVELS)]
        if len(covering) > _FPN_LEVELS:
            notes.append(
                f"instance sides span {len(covering)} octaves ({low}..{high} px), more than the "
                f"{_FPN_LEVELS} FPN levels; consider two sizes per level"
            )
        advice["anchor_sizes_covering_p1_p99"] = covering
        advice["MODEL.ANCHOR_GENERATOR.SIZES"] = [[size] for size in levels]
    detections = max(100, math.ceil(densest * _DETECTION_MARGIN / 100) * 100)
    post_nms = max(_DEFAULT_TOPK, 2 * detections)
    advice["TEST.DETECTIONS_PER_IMAGE"] = detections
    advice["MODEL.RPN.POST_NMS_TOPK_TEST"] = post_nms
    advice["MODEL.RPN.PRE_NMS_TOPK_TEST"] = max(_DEFAULT_TOPK, post_nms)
    notes.append(
        f"DETECTIONS_PER_IMAGE = densest training image ({densest}) x {_DETECTION_MARGIN}, "
        "rounded up to 100; the RPN keeps at least twice that many proposals"
    )
    advice["notes"] = notes
    return advice


def stats_from_coco(coco: dict) -> dict:
    """Statistics of a training COCO dict (see :func:`compute_dataset_stats`), per class name."""
    names = {category["id"]: category["name"] for category in coco["categories"]}
    per_image = dict.fromkeys((image["id"] for image in coco["images"]), 0)
    areas: dict[str, list[int]] = {name: [] for name in names.values()}
    for annotation in coco["annotations"]:
        per_image[annotation["image_id"]] += 1
        areas[names[annotation["category_id"]]].append(annotation["area"])
    all_areas = np.array([a for values in areas.values() for a in values], dtype=np.float64)
    heights = [image["height"] for image in coco["images"]]
    widths = [image["width"] for image in coco["images"]]
    counts = list(per_image.values())
    by_class = {**areas, "all": all_areas}
    per_class = {name: len(values) for name, values in areas.items()}
    return {
        "images": len(coco["images"]),
        "empty_images": sum(1 for n in counts if n == 0),
        "instances": int(all_areas.size),
        "instances_per_class": per_class,
        "instances_per_image": _distribution(counts),
        "instance_area": {name: _distribution(values) for name, values in by_class.items()},
        "equivalent_diameter": {
            name: _distribution(equivalent_diameters(values)) for name, values in by_class.items()
        },
        "image_height": _distribution(heights),
        "image_width": _distribution(widths),
        "advice": _advice(np.sqrt(all_areas), max(counts, default=0), per_class),
    }


def compute_dataset_stats(
    root: str | os.PathLike, min_area: int = 4, class_names: Sequence[str] = DEFAULT_CLASS_NAMES
) -> dict:
    """Compute the statistics of a dataset's training images and derive config advice.

    Why: anchor sizes and the per-image detection budget must fit the data; guessing them is
    the most common way a cell model loses recall without any error.

    Args:
        root: dataset root with ``train/``.
        min_area: passed to the converter (instances below it are not counted).
        class_names: name K is the class of ``classK.tif``; the per-class keys.

    Returns:
        A JSON-ready dict: ``images``, ``empty_images``, ``instances``, ``instances_per_class``,
        ``instances_per_image`` (count, mean, min, p1..p99, max: ``p50`` is the median),
        ``instance_area`` and ``equivalent_diameter`` per class and ``all``, ``image_height``,
        ``image_width`` and ``advice`` (config keys and values, with ``notes``, among them one
        per class without instances or with under 1% of them).

    Raises:
        CellDataError: bad data, naming the file.
    """
    return stats_from_coco(load_train_coco(root, min_area, class_names=class_names))


def _row(label: str, summary: dict | None, digits: int = 0) -> str:
    """One table row: label, count and the main percentiles of a distribution."""
    if summary is None:
        return f"{label:<16}{'-':>8}"
    cells = [summary[k] for k in ("mean", "min", "p1", "p5", "p50", "p95", "p99", "max")]
    return f"{label:<16}{summary['count']:>8}" + "".join(f"{v:>9.{digits}f}" for v in cells)


def format_stats(stats: dict) -> str:
    """Render :func:`compute_dataset_stats`'s result as a plain-text report."""
    header = f"{'':<16}{'count':>8}" + "".join(
        f"{k:>9}" for k in ("mean", "min", "p1", "p5", "median", "p95", "p99", "max")
    )
    lines = [
        f"images: {stats['images']} ({stats['empty_images']} without cells), "
        f"instances: {stats['instances']}",
        "",
        "instances per class: "
        + ", ".join(f"{name} {count}" for name, count in stats["instances_per_class"].items()),
        "",
        header,
        _row("cells/image", stats["instances_per_image"], 1),
        _row("image height", stats["image_height"]),
        _row("image width", stats["image_width"]),
        "",
        "instance area (px)",
        header,
    ]
    lines += [_row(name, s) for name, s in stats["instance_area"].items()]
    lines += ["", "equivalent diameter (px)", header]
    lines += [_row(name, s, 1) for name, s in stats["equivalent_diameter"].items()]
    lines += ["", "suggested config:"]
    advice = stats["advice"]
    if "anchor_sizes_covering_p1_p99" in advice:
        lines.append(f"  (sides p1..p99 covered by {advice['anchor_sizes_covering_p1_p99']})")
    if "input_scale_at_cell_diameter" in advice:
        lines.append(f"  (INPUT.SCALE it gives: {advice['input_scale_at_cell_diameter']})")
    lines += [f"  {key} = {value}" for key, value in advice.items() if "." in key]
    lines += [f"  note: {note}" for note in advice["notes"]]
    return "\n".join(lines)


def write_stats_json(stats: dict, path: str | os.PathLike) -> None:
    """Write the statistics as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(stats, handle, indent=2)
        handle.write("\n")
