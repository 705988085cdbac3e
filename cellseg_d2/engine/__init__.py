"""Training: ``CellTrainer`` and the pieces it is built from."""

from .checkpoint import AtomicDetectionCheckpointer, WeightsUnavailableError, fetch_weights
from .trainer import (
    CellTrainer,
    TrainingDivergedError,
    adapt_config_to_machine,
    apply_epoch_schedule,
    build_cell_optimizer,
    evaluate_weights,
    fit_warmup_to_schedule,
    prepare_for_launch,
    warn_if_untrained_frozen_bn,
)

__all__ = [
    "AtomicDetectionCheckpointer",
    "CellTrainer",
    "TrainingDivergedError",
    "WeightsUnavailableError",
    "adapt_config_to_machine",
    "apply_epoch_schedule",
    "build_cell_optimizer",
    "evaluate_weights",
    "fetch_weights",
    "fit_warmup_to_schedule",
    "prepare_for_launch",
    "warn_if_untrained_frozen_bn",
]
