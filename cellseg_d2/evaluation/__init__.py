"""Evaluation: histology metrics (PQ, AJI, F1) and the evaluators a training run uses.

Imports only the floors below it (data, modeling, utils, errors, config), never engine/.
"""

from cellseg_d2.evaluation.evaluator import HistologyEvaluator, build_cell_evaluator
from cellseg_d2.evaluation.histology import (
    MATCH_IOU,
    HistologyMetrics,
    MatchCounts,
    evaluate_histology,
    format_histology,
    match_instances,
)

__all__ = [
    "MATCH_IOU",
    "HistologyEvaluator",
    "HistologyMetrics",
    "MatchCounts",
    "build_cell_evaluator",
    "evaluate_histology",
    "format_histology",
    "match_instances",
]
