"""Tests for the training-time evaluators: what build_cell_evaluator returns, and the histology
evaluator fed hand-built predictions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.structures import Instances

from cellseg_d2.data.rle import decode_rle
from cellseg_d2.evaluation.evaluator import HistologyEvaluator, build_cell_evaluator
from tests.conftest import instant_cfg


def _predictions_from(record: dict, annotations: list[dict], score: float = 1.0) -> Instances:
    """The record's own ground-truth cells as predictions (a perfect model for them)."""
    instances = Instances((record["height"], record["width"]))
    masks = [decode_rle(a["segmentation"]) for a in annotations]
    shape = (0, record["height"], record["width"])
    instances.pred_masks = torch.as_tensor(np.stack(masks) if masks else np.zeros(shape, bool))
    instances.pred_classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.long)
    instances.scores = torch.full((len(annotations),), score)
    return instances


def test_coco_evaluator_counts_the_configured_detections(cells_prefix: str, tmp_path: Path) -> None:
    name = f"{cells_prefix}_val"
    cfg = instant_cfg(cells_prefix, tmp_path, "TEST.DETECTIONS_PER_IMAGE", 321)
    assert cfg.TEST.HISTOLOGY_METRICS is False
    evaluator = build_cell_evaluator(cfg, name)
    assert isinstance(evaluator, COCOEvaluator)
    # NOTE: COCOEvaluator keeps its settings in private attributes only.
    assert evaluator._max_dets_per_image == [1, 10, 321]
    assert set(evaluator._tasks) == {"bbox", "segm"}
    assert evaluator._distributed is True
    assert evaluator._output_dir == os.path.join(str(tmp_path), "inference", name)
    other = build_cell_evaluator(cfg, name, str(tmp_path / "elsewhere"))
    assert other._output_dir == str(tmp_path / "elsewhere")


def test_histology_metrics_option_adds_the_histology_evaluator(
    cells_prefix: str, tmp_path: Path
) -> None:
    name = f"{cells_prefix}_val"
    cfg = instant_cfg(cells_prefix, tmp_path, "TEST.HISTOLOGY_METRICS", True)
    evaluators = build_cell_evaluator(cfg, name)
    assert isinstance(evaluators, DatasetEvaluators)
    coco, histology = evaluators._evaluators
    assert isinstance(coco, COCOEvaluator) and isinstance(histology, HistologyEvaluator)
    assert coco._max_dets_per_image[-1] == cfg.TEST.DETECTIONS_PER_IMAGE


def test_histology_evaluator_processes_hand_built_predictions(cells_prefix: str) -> None:
    name = f"{cells_prefix}_val"
    histology = HistologyEvaluator(name)
    histology.reset()
    records = DatasetCatalog.get(name)
    assert records
    for index, record in enumerate(records):
        annotations = record["annotations"]
        if index == 0:  # the first image: its first cell missed
            annotations = annotations[1:]
        instances = _predictions_from(record, annotations)
        histology.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    result = histology.evaluate()["histology"]
    total = sum(len(r["annotations"]) for r in records)
    assert result["precision"] == pytest.approx(100.0)
    assert result["recall"] == pytest.approx(100.0 * (total - 1) / total)
    assert result["SQ"] == pytest.approx(100.0)


def test_histology_evaluator_drops_low_scores_and_starts_over_on_reset(cells_prefix: str) -> None:
    name = f"{cells_prefix}_val"
    histology = HistologyEvaluator(name, score_thresh=0.5)
    record = DatasetCatalog.get(name)[0]
    perfect = _predictions_from(record, record["annotations"], score=0.9)
    histology.process([{"image_id": record["image_id"]}], [{"instances": perfect}])
    assert histology.evaluate()["histology"]["PQ"] == pytest.approx(100.0)
    histology.reset()
    unsure = _predictions_from(record, record["annotations"], score=0.4)
    histology.process([{"image_id": record["image_id"]}], [{"instances": unsure}])
    result = histology.evaluate()["histology"]
    assert result["recall"] == 0.0 and result["PQ"] == 0.0
