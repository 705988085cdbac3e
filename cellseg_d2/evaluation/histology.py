"""Histology instance-segmentation metrics beside COCO AP: PQ (DQ x SQ), AJI, F1.

The histology benchmarks (MoNuSAC, CoNSeP, PanNuke, Lizard) compare methods by these instead of
or beside COCO AP. The definitions follow HoVer-Net's reference code (``get_fast_pq`` and
``get_fast_aji`` in ``metrics/stats_utils.py`` of https://github.com/vqdang/hover_net), the one
PanNuke and CoNIC reuse:

- a prediction and a ground-truth cell match when their mask IoU is **strictly above 0.5**;
- ``DQ = TP / (TP + FP/2 + FN/2)`` (the F1 score of detection), ``SQ`` = mean IoU of the
  matched pairs, ``PQ = DQ * SQ``;
- ``AJI``: each ground-truth cell is paired with the prediction of highest IoU with it (a
  prediction may serve several cells); AJI = sum of the pairs' intersections / (sum of the
  pairs' unions + areas of unpaired cells + areas of predictions paired with no cell);
- precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, ``F1`` (= DQ) at IoU 0.5.

Differences from the reference, all deliberate:

- counts are summed over the whole dataset before the ratios are taken (as CoNIC's ``mPQ+``
  does), as if every image were a tile of one big image; per-image averages are unstable on
  images with a handful of cells and undefined on images without any;
- instances are RLE masks, which may overlap (a Mask R-CNN's do), instead of one label image.
  Matching is greedy by IoU, each cell and prediction used once; for non-overlapping masks,
  where IoU > 0.5 makes every match unique, this is the reference's matching exactly;
- per class, cells and predictions of that class only are matched (MoNuSAC's and PanNuke's
  per-class PQ); the class-free figures match regardless of class.

IoUs come from pycocotools on the RLEs (no pixel decoding), so memory stays at one image's
instances. Figures are in percent, like the AP figures of :mod:`cellseg_d2.evaluation.scoring`.
The training-time evaluator built on these counts is in :mod:`cellseg_d2.evaluation.evaluator`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_util

from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import group_by_image

__all__ = [
    "MATCH_IOU",
    "HistologyMetrics",
    "MatchCounts",
    "evaluate_histology",
    "format_histology",
    "match_instances",
]

#: Matching threshold of PQ and F1: IoU strictly above this.
MATCH_IOU = 0.5


@dataclass
class MatchCounts:
    """What the PQ and AJI ratios are made of, summable over images.

    Attributes:
        tp, fp, fn: matched predictions, unmatched predictions, unmatched cells.
        iou_sum: sum of the IoUs of the matched pairs.
        aji_inter, aji_union: AJI's numerator and denominator in pixels.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0
    aji_inter: int = 0
    aji_union: int = 0

    def __iadd__(self, other: MatchCounts) -> MatchCounts:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou_sum += other.iou_sum
        self.aji_inter += other.aji_inter
        self.aji_union += other.aji_union
        return self

    def figures(self) -> dict[str, float]:
        """PQ, DQ, SQ, F1, precision, recall and AJI in percent; NaN where a ratio is 0/0."""

        def ratio(num: float, den: float) -> float:
            return 100.0 * num / den if den else math.nan

        dq = ratio(self.tp, self.tp + 0.5 * self.fp + 0.5 * self.fn)
        # No match: SQ is 0 when there was something to match (as in the reference), else NaN.
        sq = ratio(self.iou_sum, self.tp) if self.tp else dq * 0.0
        return {
            "PQ": dq * sq / 100.0,
            "DQ": dq,
            "SQ": sq,
            "F1": dq,
            "precision": ratio(self.tp, self.tp + self.fp),
            "recall": ratio(self.tp, self.tp + self.fn),
            "AJI": ratio(self.aji_inter, self.aji_union),
        }


def _areas(rles: Sequence[dict]) -> np.ndarray:
    # NOTE: one RLE per call: pycocotools 2.0.11's area() overflows on lists above 255 RLEs.
    return np.array([int(mask_util.area(rle)) for rle in rles], dtype=np.int64)


def _as_bytes(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }


def match_instances(gt_rles: Sequence[dict], pred_rles: Sequence[dict]) -> MatchCounts:
    """Match predictions to ground-truth cells of one image and count for PQ and AJI.

    Args:
        gt_rles: ground-truth masks, compressed COCO RLEs of one image size.
        pred_rles: predicted masks of the same image.

    Returns:
        The counts of this image (see :class:`MatchCounts`).
    """
    gt = [_as_bytes(rle) for rle in gt_rles]
    pred = [_as_bytes(rle) for rle in pred_rles]
    gt_area, pred_area = _areas(gt), _areas(pred)
    if not gt or not pred:
        return MatchCounts(fp=len(pred), fn=len(gt), aji_union=int(gt_area.sum() + pred_area.sum()))
    # iou[p, g]; pycocotools skips pairs whose boxes do not overlap.
    iou = np.asarray(mask_util.iou(pred, gt, [0] * len(gt)), dtype=np.float64).reshape(
        len(pred), len(gt)
    )
    # Exact pixel intersections back from the IoU: I = IoU * (a + b) / (1 + IoU).
    both = pred_area[:, None] + gt_area[None, :]
    inter = np.rint(iou * both / (1.0 + iou)).astype(np.int64)
    union = both - inter

    # PQ / F1: greedy by IoU over the pairs above the threshold, each instance used once.
    rows, cols = np.nonzero(iou > MATCH_IOU)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_pred: set[int] = set()
    used_gt: set[int] = set()
    iou_sum = 0.0
    for p, g in zip(rows[order].tolist(), cols[order].tolist()):
        if p in used_pred or g in used_gt:
            continue
        used_pred.add(p)
        used_gt.add(g)
        iou_sum += float(iou[p, g])
    tp = len(used_gt)

    # AJI: each cell takes its best prediction (if it overlaps any), predictions may repeat.
    best = np.argmax(iou, axis=0)
    paired = iou[best, np.arange(len(gt))] > 0.0
    aji_inter = int(inter[best[paired], np.flatnonzero(paired)].sum())
    aji_union = int(union[best[paired], np.flatnonzero(paired)].sum())
    aji_union += int(gt_area[~paired].sum())
    unpaired_pred = np.ones(len(pred), dtype=bool)
    unpaired_pred[best[paired]] = False
    aji_union += int(pred_area[unpaired_pred].sum())
    return MatchCounts(
        tp=tp,
        fp=len(pred) - tp,
        fn=len(gt) - tp,
        iou_sum=iou_sum,
        aji_inter=aji_inter,
        aji_union=aji_union,
    )


class HistologyMetrics:
    """Accumulate PQ/AJI/F1 counts image by image, overall and per class.

    Why an accumulator: the training-time evaluator and the submission scorer both see one
    image at a time; only a few numbers per class are kept, never the masks.
    """

    def __init__(self, class_names: Sequence[str], score_thresh: float = 0.5) -> None:
        """
        Args:
            class_names: name of category ``k + 1`` at index ``k`` (any number of classes).
            score_thresh: predictions below this score are left out (PQ, unlike AP, counts
                every prediction given to it as a claim).
        """
        self.class_names = list(class_names)
        self.score_thresh = float(score_thresh)
        self.overall = MatchCounts()
        self.per_class = [MatchCounts() for _ in self.class_names]
        self.present = [False] * len(self.class_names)  # class seen in ground truth or kept preds

    def add_image(self, ground_truth: Iterable[dict], predictions: Iterable[dict]) -> None:
        """Add one image: instances as dicts with ``category_id`` (1..N) and ``segmentation``.

        Raises:
            ValueError: a ``category_id`` outside 1..N.
        """
        gt = list(ground_truth)
        pred = [p for p in predictions if p.get("score", 1.0) >= self.score_thresh]
        for instance in (*gt, *pred):
            if not 1 <= instance["category_id"] <= len(self.class_names):
                raise ValueError(
                    f"category_id {instance['category_id']} is not in 1..{len(self.class_names)}"
                )
        self.overall += match_instances(
            [i["segmentation"] for i in gt], [p["segmentation"] for p in pred]
        )
        for k in range(len(self.class_names)):
            gt_k = [i["segmentation"] for i in gt if i["category_id"] == k + 1]
            pred_k = [p["segmentation"] for p in pred if p["category_id"] == k + 1]
            if gt_k or pred_k:
                self.present[k] = True
                self.per_class[k] += match_instances(gt_k, pred_k)

    def merge(self, other: HistologyMetrics) -> None:
        """Add another accumulator's counts (from another process of a distributed run)."""
        self.overall += other.overall
        for k, counts in enumerate(other.per_class):
            self.per_class[k] += counts
            self.present[k] = self.present[k] or other.present[k]

    def summary(self) -> dict[str, float]:
        """The figures in percent.

        Returns:
            Class-free ``PQ``, ``DQ``, ``SQ``, ``AJI``, ``F1``, ``precision``, ``recall``;
            ``mPQ`` (mean of the per-class PQ over classes present in ground truth or
            predictions), and ``PQ-<name>``, ``DQ-<name>``, ``SQ-<name>``, ``F1-<name>`` per
            class (NaN for a class in neither).
        """
        figures = self.overall.figures()
        result = {key: figures[key] for key in ("PQ", "DQ", "SQ", "AJI", "F1")}
        result["precision"] = figures["precision"]
        result["recall"] = figures["recall"]
        per_class_pq = []
        for name, counts, present in zip(self.class_names, self.per_class, self.present):
            class_figures = counts.figures() if present else dict.fromkeys(result, math.nan)
            for key in ("PQ", "DQ", "SQ", "F1"):
                result[f"{key}-{name}"] = class_figures[key]
            if present:
                per_class_pq.append(class_figures["PQ"])
        result["mPQ"] = float(np.mean(per_class_pq)) if per_class_pq else math.nan
        return result


def evaluate_histology(
    gt_coco: dict, results: Sequence[dict], score_thresh: float = 0.5
) -> dict[str, float]:
    """PQ, AJI and F1 of a (validated) submission against COCO ground truth.

    Args:
        gt_coco: ``{"images", "annotations", "categories"}``, e.g. from
            :func:`~cellseg_d2.evaluation.scoring.load_ground_truth_coco`; classes are taken from
            its ``categories`` (ids 1..N), not assumed.
        results: detections in submission format.
        score_thresh: predictions below this score are left out.

    Returns:
        :meth:`HistologyMetrics.summary`.

    Raises:
        CellDataError: a detection's ``category_id`` is not one of the ground truth's classes.
    """
    categories = sorted(gt_coco["categories"], key=lambda category: category["id"])
    if [c["id"] for c in categories] != list(range(1, len(categories) + 1)):
        raise ValueError("ground-truth category ids must be 1..N")
    metrics = HistologyMetrics([c["name"] for c in categories], score_thresh)
    gt_by_image = group_by_image(gt_coco["annotations"])
    pred_by_image = group_by_image(results)
    for image in gt_coco["images"]:
        try:
            metrics.add_image(gt_by_image.get(image["id"], []), pred_by_image.get(image["id"], []))
        except ValueError as exc:
            raise CellDataError(f"image_id {image['id']}: {exc}") from exc
    return metrics.summary()


def format_histology(metrics: Mapping[str, float], score_thresh: float | None = None) -> str:
    """The figures as ``name value`` lines, class-free first, then one row per class.

    Why its own table: the per-class figures are four columns per class, not COCO's rows.
    """
    head = ("PQ", "DQ", "SQ", "mPQ", "AJI", "F1", "precision", "recall")
    title = "histology (IoU > 0.5"
    title += f", score >= {score_thresh:g})" if score_thresh is not None else ")"
    lines = [title]
    lines += [f"{key:<10}{metrics[key]:>9.2f}" for key in head]
    names = [key[3:] for key in metrics if key.startswith("PQ-")]
    if names:
        width = max(len(name) for name in names) + 2
        lines.append(f"{'class':<{width}}" + "".join(f"{k:>9}" for k in ("PQ", "DQ", "SQ", "F1")))
        for name in names:
            values = "".join(f"{metrics[f'{k}-{name}']:>9.2f}" for k in ("PQ", "DQ", "SQ", "F1"))
            lines.append(f"{name:<{width}}{values}")
    return "\n".join(lines)
