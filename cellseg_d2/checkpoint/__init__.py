"""Safe checkpointing below both training and prediction: weights that cannot run code, URLs
resolved by the project into a private cache, and atomic saves."""

from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer, WeightsMismatchError
from cellseg_d2.checkpoint.weights_url import WeightsUnavailableError, fetch_weights

__all__ = [
    "AtomicDetectionCheckpointer",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "fetch_weights",
]
