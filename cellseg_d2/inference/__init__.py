"""Inference side: prediction, exports and figures (submission files and scoring live in
``cellseg_d2.evaluation``).

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
    "Detection": "detections",
    "detections_to_results": "predictor",
    "merge_tile_detections": "detections",
    "tile_windows": "detections",
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
