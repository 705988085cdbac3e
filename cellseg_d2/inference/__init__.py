"""Inference side: prediction, submission files (write, read, validate), scoring and figures."""

from cellseg_d2.inference.figures import compose_figure, render_comparison, write_png
from cellseg_d2.inference.predict import build_predict_config, iter_batches, predict_folder
from cellseg_d2.inference.predictor import (
    CellPredictor,
    Detection,
    detections_to_results,
    merge_tile_detections,
    tile_windows,
)
from cellseg_d2.inference.scoring import (
    evaluate_submission,
    format_scores,
    ground_truth_as_results,
    ground_truth_folder,
    load_ground_truth_coco,
    read_ground_truth_instances,
    write_scores_json,
)
from cellseg_d2.inference.submission import (
    SubmissionReport,
    format_report,
    group_by_image,
    read_submission,
    validate_submission,
    write_submission,
)
from cellseg_d2.inference.visualize import visualize_predictions

__all__ = [
    "build_predict_config",
    "CellPredictor",
    "Detection",
    "SubmissionReport",
    "compose_figure",
    "detections_to_results",
    "evaluate_submission",
    "format_report",
    "format_scores",
    "ground_truth_as_results",
    "ground_truth_folder",
    "group_by_image",
    "iter_batches",
    "load_ground_truth_coco",
    "merge_tile_detections",
    "predict_folder",
    "read_ground_truth_instances",
    "read_submission",
    "render_comparison",
    "tile_windows",
    "validate_submission",
    "visualize_predictions",
    "write_png",
    "write_scores_json",
    "write_submission",
]
