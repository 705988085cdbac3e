"""Config rules that finish a loaded config for a run: what this machine can do (device, AMP),
epochs turned into iterations, and a warm-up that fits the schedule.

Why here, below training and prediction: both finish their config with these rules, and the
config a training run saves must be the one that ran, so the rules belong to the config floor,
not to the trainer.
"""

from __future__ import annotations

import logging
import math

import torch
from detectron2.config import CfgNode

__all__ = [
    "adapt_config_to_machine",
    "apply_epoch_schedule",
    "fit_warmup_to_schedule",
    "iterations_per_epoch",
]

logger = logging.getLogger(__name__)


def adapt_config_to_machine(cfg: CfgNode) -> CfgNode:
    """Make a config runnable on this machine, warning once about each change.

    - ``MODEL.DEVICE`` "cuda" without CUDA becomes "cpu" (detectron2 would crash in ``.to()``);
    - ``SOLVER.AMP.ENABLED`` without CUDA trains in fp32 (detectron2's ``AMPTrainer`` asserts
      CUDA).

    Returns a (possibly) modified clone; the input is not changed.
    """
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning(
            "SOLVER.AMP.ENABLED needs CUDA; training in full precision (fp32) on %s instead",
            cfg.MODEL.DEVICE,
        )
        cfg.SOLVER.AMP.ENABLED = False
    if was_frozen:
        cfg.freeze()
    return cfg


def iterations_per_epoch(num_images: int, ims_per_batch: int) -> int:
    """``ceil(num_images / ims_per_batch)``, at least 1: what one epoch means everywhere."""
    return max(1, math.ceil(num_images / ims_per_batch))


def apply_epoch_schedule(cfg: CfgNode, num_images: int) -> CfgNode:
    """Turn ``SOLVER.EPOCHS`` and the ``*_EPOCHS`` periods into iterations.

    One epoch is ``ceil(num_images / SOLVER.IMS_PER_BATCH)`` iterations, ``num_images`` being the
    images of ``DATASETS.TRAIN`` (counted by the caller: the config floor does not read data).
    Keys set to 0 leave their iteration counterparts as they are. Returns a (possibly) modified
    clone.
    """
    epoch_keys = (
        cfg.SOLVER.EPOCHS,
        cfg.SOLVER.CHECKPOINT_PERIOD_EPOCHS,
        cfg.TEST.EVAL_PERIOD_EPOCHS,
    )
    if not any(value > 0 for value in epoch_keys):
        return cfg
    iters_per_epoch = iterations_per_epoch(num_images, cfg.SOLVER.IMS_PER_BATCH)
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    if cfg.SOLVER.EPOCHS > 0:
        cfg.SOLVER.MAX_ITER = int(cfg.SOLVER.EPOCHS * iters_per_epoch)
    if cfg.SOLVER.CHECKPOINT_PERIOD_EPOCHS > 0:
        cfg.SOLVER.CHECKPOINT_PERIOD = max(
            1, round(cfg.SOLVER.CHECKPOINT_PERIOD_EPOCHS * iters_per_epoch)
        )
    if cfg.TEST.EVAL_PERIOD_EPOCHS > 0:
        cfg.TEST.EVAL_PERIOD = max(1, round(cfg.TEST.EVAL_PERIOD_EPOCHS * iters_per_epoch))
    if was_frozen:
        cfg.freeze()
    return cfg


def fit_warmup_to_schedule(cfg: CfgNode) -> CfgNode:
    """Shorten a warm-up that is as long as training (or longer) to a tenth of ``MAX_ITER``.

    A warm-up that never ends trains at a fraction of ``BASE_LR`` throughout (an 80-iteration run
    with the base configs' 200 warm-up iterations trained at lr ~1e-8). This applies whatever
    set ``MAX_ITER``: ``SOLVER.EPOCHS``, a config file or an override. Returns a (possibly)
    modified clone.
    """
    if cfg.SOLVER.WARMUP_ITERS < cfg.SOLVER.MAX_ITER:
        return cfg
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    shortened = cfg.SOLVER.MAX_ITER // 10
    logger.warning(
        "SOLVER.WARMUP_ITERS %d >= SOLVER.MAX_ITER %d: warm-up shortened to %d iterations",
        cfg.SOLVER.WARMUP_ITERS,
        cfg.SOLVER.MAX_ITER,
        shortened,
    )
    cfg.SOLVER.WARMUP_ITERS = shortened
    if was_frozen:
        cfg.freeze()
    return cfg
