"""The evaluators a training run uses on its test splits: COCO AP and the histology figures.

detectron2's trainer asks ``build_evaluator`` for one :class:`DatasetEvaluator` per split;
:func:`build_cell_evaluator` is that answer for cell splits (COCO box and mask AP with the
detection cap of ``TEST.DETECTIONS_PER_IMAGE``, plus PQ, AJI and F1 when
``TEST.HISTOLOGY_METRICS``), so the trainer never needs to know what evaluation holds.
"""

from __future__ import annotations

import os

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from cellseg_d2.data.rle import encode_mask
from cellseg_d2.evaluation.histology import HistologyMetrics

__all__ = ["HistologyEvaluator", "build_cell_evaluator"]


class HistologyEvaluator(DatasetEvaluator):
    """PQ, AJI and F1 on a registered split at training time (``TEST.HISTOLOGY_METRICS``).

    Ground truth comes from the split's dataset dicts (the test loader strips annotations from
    its inputs) and classes from its metadata's ``thing_classes``. Each image's predicted masks
    are RLE-encoded and matched as they arrive, so only a few counts per class are kept.
    Results appear as ``histology/PQ`` etc. beside COCOEvaluator's ``segm/AP``.
    """

    def __init__(self, dataset_name: str, score_thresh: float = 0.5) -> None:
        """
        Args:
            dataset_name: a registered split whose dicts carry ``annotations``.
            score_thresh: predictions below this score are left out.
        """
        self._class_names = list(MetadataCatalog.get(dataset_name).thing_classes)
        self._score_thresh = score_thresh
        self._ground_truth = {
            record["image_id"]: [
                {"category_id": a["category_id"] + 1, "segmentation": a["segmentation"]}
                for a in record.get("annotations", [])
            ]
            for record in DatasetCatalog.get(dataset_name)
        }
        self.reset()

    def reset(self) -> None:
        """Start a new evaluation round."""
        self._metrics = HistologyMetrics(self._class_names, self._score_thresh)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Match one batch's predictions to their ground truth, image by image."""
        for item, output in zip(inputs, outputs):
            instances = output["instances"].to("cpu")
            masks = instances.pred_masks.numpy()
            predictions = [
                {"category_id": int(c) + 1, "score": float(s), "segmentation": encode_mask(m)}
                for c, s, m in zip(
                    instances.pred_classes.tolist(), instances.scores.tolist(), masks
                )
                if s >= self._score_thresh
            ]
            self._metrics.add_image(self._ground_truth.get(item["image_id"], []), predictions)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Sum the counts of every process; ``{"histology": summary}`` on the main process."""
        gathered = comm.gather(self._metrics, dst=0)
        if not comm.is_main_process():
            return {}
        total = HistologyMetrics(self._class_names, self._score_thresh)
        for part in gathered:
            total.merge(part)
        return {"histology": total.summary()}


def build_cell_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """COCO box and mask AP counting ``TEST.DETECTIONS_PER_IMAGE`` detections per image, with
    :class:`HistologyEvaluator` beside it when ``TEST.HISTOLOGY_METRICS`` is set.

    NOTE: detectron2's own train_net.py leaves ``max_dets_per_image`` at COCO's 100, which
    silently ignores detections beyond the 100th in images with hundreds of cells.

    Args:
        cfg: the finished config of the run.
        dataset_name: a registered cell split with annotations.
        output_folder: where COCOEvaluator writes its files; default
            ``OUTPUT_DIR/inference/<dataset_name>``.

    Returns:
        A ``COCOEvaluator`` (tasks bbox and segm, distributed), or ``DatasetEvaluators`` of it
        and the histology evaluator.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    coco = COCOEvaluator(
        dataset_name,
        tasks=("bbox", "segm"),
        distributed=True,
        output_dir=output_folder,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
    if not cfg.TEST.HISTOLOGY_METRICS:
        return coco
    return DatasetEvaluators([coco, HistologyEvaluator(dataset_name)])
