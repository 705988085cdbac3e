"""Tests for the histology metrics (PQ, AJI, F1) against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.rle import encode_mask
from cellseg_d2.evaluation.histology import (
    HistologyMetrics,
    evaluate_histology,
    format_histology,
    match_instances,
)
from cellseg_d2.evaluation.scoring import load_ground_truth_coco


def _box(rows: slice, cols: slice, size: int = 10) -> dict:
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = True
    return encode_mask(mask)


def _inst(category: int, rle: dict, score: float = 1.0) -> dict:
    return {"category_id": category, "segmentation": rle, "score": score}


# Ground truth: A (16 px, class 1), B (16 px, class 1), C (4 px, class 2).
A, B, C = (
    _box(slice(0, 4), slice(0, 4)),
    _box(slice(6, 10), slice(6, 10)),
    _box(slice(0, 2), slice(8, 10)),
)
# Predictions: P1 IoU 12/16 with A; P2 IoU exactly 8/16 = 0.5 with B (not a match: strictly
# above 0.5); P3 touches nothing.
P1, P2, P3 = (
    _box(slice(0, 4), slice(0, 3)),
    _box(slice(6, 10), slice(8, 10)),
    _box(slice(4, 6), slice(0, 2)),
)


def test_match_counts_by_hand() -> None:
    counts = match_instances([A, B, C], [P1, P2, P3])
    assert (counts.tp, counts.fp, counts.fn) == (1, 2, 2)
    assert counts.iou_sum == pytest.approx(0.75)
    # AJI: A-P1 12/16, B-P2 8/16, C unpaired (+4), P3 unpaired (+4): 20 / 40.
    assert (counts.aji_inter, counts.aji_union) == (20, 40)
    figures = counts.figures()
    assert figures["DQ"] == pytest.approx(100 / 3)
    assert figures["SQ"] == pytest.approx(75.0)
    assert figures["PQ"] == pytest.approx(25.0)
    assert figures["precision"] == pytest.approx(100 / 3)
    assert figures["recall"] == pytest.approx(100 / 3)
    assert figures["AJI"] == pytest.approx(50.0)


def test_per_class_and_mean_pq_by_hand() -> None:
    metrics = HistologyMetrics(["a", "b", "c"])
    metrics.add_image(
        [_inst(1, A), _inst(1, B), _inst(2, C)], [_inst(1, P1), _inst(1, P2), _inst(2, P3)]
    )
    result = metrics.summary()
    # class a: TP A-P1, FP P2, FN B -> DQ 1/2, SQ 0.75; class b: FP P3, FN C -> PQ 0; c: absent.
    assert result["DQ-a"] == pytest.approx(50.0) and result["SQ-a"] == pytest.approx(75.0)
    assert result["PQ-a"] == pytest.approx(37.5)
    assert result["PQ-b"] == 0.0 and result["SQ-b"] == 0.0
    assert math.isnan(result["PQ-c"])
    assert result["mPQ"] == pytest.approx(18.75)
    assert result["PQ"] == pytest.approx(25.0) and result["AJI"] == pytest.approx(50.0)
    text = format_histology(result, 0.5)
    assert "mPQ" in text and "score >= 0.5" in text and text.splitlines()[-1].split()[0] == "c"


def test_overlapping_predictions_match_once_and_counts_add_over_images() -> None:
    metrics = HistologyMetrics(["only"], score_thresh=0.5)
    whole, most = _box(slice(0, 4), slice(0, 4)), _box(slice(0, 4), slice(0, 3))
    low = _box(slice(6, 8), slice(6, 8))
    # Both predictions have IoU > 0.5 with the cell: the better one matches, the other is an FP;
    # the low-score prediction is left out.
    metrics.add_image(
        [_inst(1, whole)], [_inst(1, most, 0.9), _inst(1, whole, 0.8), _inst(1, low, 0.1)]
    )
    # A second image without cells and one prediction of 5 px: one more FP, 5 px more union.
    metrics.add_image([], [_inst(1, _box(slice(0, 5), slice(0, 1)), 0.7)])
    result = metrics.summary()
    # TP 1 (IoU 1), FP 2, FN 0: DQ 1 / 2, SQ 1; AJI 16 / (16 + 12 + 5).
    assert result["DQ"] == pytest.approx(50.0) and result["SQ"] == pytest.approx(100.0)
    assert result["precision"] == pytest.approx(100 / 3) and result["recall"] == 100.0
    assert result["AJI"] == pytest.approx(100 * 16 / 33)


def test_bad_category_and_empty_inputs() -> None:
    metrics = HistologyMetrics(["a"])
    with pytest.raises(ValueError, match="category_id 2 is not in 1..1"):
        metrics.add_image([_inst(2, A)], [])
    assert all(math.isnan(value) for value in HistologyMetrics(["a"]).summary().values())


def test_perfect_submission_scores_100_with_any_number_of_classes(
    dataset: tuple[Path, list[dict], list[dict]],
) -> None:
    root, entries, results = dataset
    gt = load_ground_truth_coco(root / "test_gt", entries)
    scores = evaluate_histology(gt, results)
    for key in ("PQ", "DQ", "SQ", "mPQ", "AJI", "F1", "precision", "recall"):
        assert scores[key] == pytest.approx(100.0), key
    # Six classes named by the ground truth, not assumed: classes 5 and 6 have no cell (NaN).
    six = {**gt, "categories": [{"id": k, "name": f"type{k}"} for k in range(1, 7)]}
    scores = evaluate_histology(six, results[: len(results) // 2])
    assert math.isnan(scores["PQ-type6"]) and scores["recall"] < 100.0
    assert scores["precision"] == pytest.approx(100.0)
