"""Training: ``CellTrainer`` and the pieces it is built from."""

from cellseg_d2.engine.optimizer import build_cell_optimizer
from cellseg_d2.engine.time_budget import fit_time_budget, measure_run_timing
from cellseg_d2.engine.trainer import (
    CellTrainer,
    TrainingDivergedError,
    evaluate_weights,
    prepare_for_launch,
    warn_if_untrained_frozen_bn,
)

__all__ = [
    "CellTrainer",
    "TrainingDivergedError",
    "build_cell_optimizer",
    "evaluate_weights",
    "fit_time_budget",
    "measure_run_timing",
    "prepare_for_launch",
    "warn_if_untrained_frozen_bn",
]
