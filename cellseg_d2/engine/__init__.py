"""Training: ``CellTrainer`` and the pieces it is built from."""

from .checkpoint import AtomicDetectionCheckpointer, WeightsMismatchError
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
from .weights_url import WeightsUnavailableError, fetch_weights

__all__ = [
    "AtomicDetectionCheckpointer",
    "CellTrainer",
    "TrainingDivergedError",
    "WeightsMismatchError",
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
