"""Inference side: prediction, submission files (write, read, validate), scoring and figures.

The names below load on first use (PEP 562), not at ``import cellseg_d2.inference``: most of
them need detectron2, and ``cellseg_d2.inference.exported`` must import where detectron2 is
not installed (it runs exported models there).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it.
_LAZY = {
    "build_predict_config": "predict",
    "iter_batches": "predict",
    "predict_folder": "predict",
    "CellPredictor": "predictor",
    "Detection": "predictor",
    "detections_to_results": "predictor",
    "merge_tile_detections": "predictor",
    "tile_windows": "predictor",
    "evaluate_submission": "scoring",
    "format_scores": "scoring",
    "ground_truth_as_results": "scoring",
    "ground_truth_folder": "scoring",
    "load_ground_truth_coco": "scoring",
    "read_ground_truth_instances": "scoring",
    "write_scores_json": "scoring",
    "SubmissionReport": "submission",
    "format_report": "submission",
    "group_by_image": "submission",
    "read_submission": "submission",
    "validate_submission": "submission",
    "write_submission": "submission",
    "compose_figure": "figures",
    "render_comparison": "figures",
    "visualize_predictions": "visualize",
    "write_png": "figures",
    "ExportedPredictor": "exported",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
