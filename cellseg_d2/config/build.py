"""The one way every tool, the benchmark and the tests get the config they run with.

:func:`build_config` reads the file and the command-line overrides (safely, through
:func:`~cellseg_d2.config.loader.load_cellseg_config`) and :func:`finish_config` applies, once and
in this order, every rule that turns a loaded config into the one that runs: the iteration vs
epoch rule for keys given on the command line, this machine (CPU without CUDA, no AMP on CPU),
epochs into iterations, a warm-up that fits, and detectron2's worker scaling. The result is
frozen.

Why one place: the config was finished in three steps across ``train_net.py`` and the trainer,
partly after ``default_setup`` had saved ``config.yaml``, so the saved config was not the one that
ran, and a command-line ``SOLVER.MAX_ITER 25`` was silently replaced by the base config's
``SOLVER.EPOCHS: 50`` (a day of training instead of 25 iterations).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from detectron2.config import CfgNode

from cellseg_d2.config.loader import load_cellseg_config, lookup_key
from cellseg_d2.config.scale import resolve_input_scale
from cellseg_d2.config.schedule import (
    adapt_config_to_machine,
    apply_epoch_schedule,
    fit_warmup_to_schedule,
    iterations_per_epoch,
)
from cellseg_d2.errors import ConfigError

__all__ = [
    "ITERATION_EPOCH_KEYS",
    "build_config",
    "describe_schedule",
    "finish_config",
    "settle_iteration_epoch_keys",
]

logger = logging.getLogger(__name__)

#: Each training length or period can be given in iterations or in epochs. When the epoch key is
#: non-zero it wins, unless the iteration key was given on the command line and the epoch key was
#: not (then the command line wins and the epoch key is set to 0); both on the command line is an
#: error.
ITERATION_EPOCH_KEYS: tuple[tuple[str, str], ...] = (
    ("SOLVER.MAX_ITER", "SOLVER.EPOCHS"),
    ("SOLVER.CHECKPOINT_PERIOD", "SOLVER.CHECKPOINT_PERIOD_EPOCHS"),
    ("TEST.EVAL_PERIOD", "TEST.EVAL_PERIOD_EPOCHS"),
)


def build_config(
    config_file: str | os.PathLike,
    opts: Sequence[Any] = (),
    *,
    train_images: Callable[[CfgNode], int] | None = None,
    train_diameter: Callable[[CfgNode], float] | None = None,
    world_size: int = 1,
) -> CfgNode:
    """The finished, frozen config of a run: ``config_file``, then the ``KEY VALUE`` ``opts``,
    then :func:`finish_config`.

    Args:
        config_file: a local YAML file (``_BASE_`` chains allowed).
        opts: flat command-line overrides ``[KEY, VALUE, ...]``.
        train_images: for training, counts the images of ``DATASETS.TRAIN`` (e.g.
            :func:`cellseg_d2.data.register.count_train_images`); needed when any ``*EPOCHS``
            key is non-zero. ``None`` for prediction, export and evaluation.
        train_diameter: the median cell diameter of ``DATASETS.TRAIN`` in pixels (e.g.
            :func:`cellseg_d2.data.stats.median_train_diameter`); needed to turn
            ``INPUT.CELL_DIAMETER`` into ``INPUT.SCALE`` (see
            :func:`~cellseg_d2.config.scale.resolve_input_scale`). ``None`` for prediction.
        world_size: the number of training processes (detectron2's worker scaling).

    Raises:
        ConfigError: a bad file or override, or a schedule given twice on the command line.
    """
    cfg = load_cellseg_config(config_file, opts)
    return finish_config(
        cfg,
        command_line_keys=opts[0::2],
        train_images=train_images,
        train_diameter=train_diameter,
        world_size=world_size,
    )


def finish_config(
    cfg: CfgNode,
    command_line_keys: Sequence[Any] = (),
    *,
    train_images: Callable[[CfgNode], int] | None = None,
    train_diameter: Callable[[CfgNode], float] | None = None,
    world_size: int = 1,
) -> CfgNode:
    """Apply every finishing rule to a loaded config and return it frozen (the input is left
    alone).

    ``train_net.py`` calls this (rather than :func:`build_config`) only because it sets up the
    run's log file between loading and finishing, so the rule lines reach ``log.txt``.

    Args:
        cfg: a config from :func:`~cellseg_d2.config.loader.load_cellseg_config`.
        command_line_keys: the keys the person running the command gave as overrides.
        train_images: see :func:`build_config`; with it, the schedule is resolved and logged.
        train_diameter: see :func:`build_config`; with it, ``INPUT.SCALE`` is computed from
            ``INPUT.CELL_DIAMETER`` (when that is set) and logged.
        world_size: see :func:`build_config`.
    """
    cfg = settle_iteration_epoch_keys(cfg, [str(key) for key in command_line_keys])
    cfg = adapt_config_to_machine(cfg)
    cfg = resolve_input_scale(cfg, train_diameter)
    cfg = _point_head_follows_class_count(cfg)
    if train_images is not None:
        num_images = None
        if _uses_epochs(cfg):
            num_images = train_images(cfg)
            cfg = apply_epoch_schedule(cfg, num_images)
        cfg = fit_warmup_to_schedule(cfg)
        if cfg.SOLVER.REFERENCE_WORLD_SIZE and cfg.SOLVER.REFERENCE_WORLD_SIZE != world_size:
            # detectron2's own rule (batch, lr and schedule scaled to the world size); imported
            # here so prediction and the submission tools never load the training engine.
            from detectron2.engine import DefaultTrainer

            cfg = DefaultTrainer.auto_scale_workers(cfg, world_size)
        logger.info(describe_schedule(cfg, num_images))
    cfg = cfg.clone()
    _unshare_sequences(cfg)
    cfg.freeze()
    return cfg


def settle_iteration_epoch_keys(cfg: CfgNode, command_line_keys: Sequence[str]) -> CfgNode:
    """Apply the :data:`ITERATION_EPOCH_KEYS` rule; return a (possibly) changed clone.

    Why: a user who types ``SOLVER.MAX_ITER 25`` means 25 iterations, whatever ``EPOCHS`` the
    base config holds; a user who types both cannot be guessed and is asked to choose.

    Raises:
        ConfigError: an iteration key and its epoch key (non-zero) both on the command line.
    """
    given = set(command_line_keys)
    changes: list[tuple[str, str]] = []
    for iters_key, epochs_key in ITERATION_EPOCH_KEYS:
        epochs = lookup_key(cfg, epochs_key)
        if epochs <= 0 or iters_key not in given:
            continue
        if epochs_key in given:
            raise ConfigError(
                f"{iters_key} and {epochs_key} are both given on the command line: give one "
                f"(or set {epochs_key} 0 to count in iterations)"
            )
        changes.append((iters_key, epochs_key))
    if not changes:
        return cfg
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for iters_key, epochs_key in changes:
        logger.info(
            "%s %s from the command line replaces %s %s of the config file (rule: a "
            "command-line value wins over its counterpart in the file); %s set to 0",
            iters_key,
            lookup_key(cfg, iters_key),
            epochs_key,
            lookup_key(cfg, epochs_key),
            epochs_key,
        )
        section, name = epochs_key.split(".")
        setattr(getattr(cfg, section), name, 0 if name == "EPOCHS" else 0.0)
    if was_frozen:
        cfg.freeze()
    return cfg


def describe_schedule(cfg: CfgNode, num_images: int | None = None) -> str:
    """One line saying the schedule a run follows: length, where it came from, warm-up, lr
    schedule, checkpoint and evaluation periods. Logged at the start of every training run.

    Args:
        cfg: a finished config.
        num_images: the training images the epochs were counted on, if they were.
    """
    length = f"{cfg.SOLVER.MAX_ITER} iterations"
    if cfg.SOLVER.EPOCHS > 0 and num_images is not None:
        iters_per_epoch = iterations_per_epoch(num_images, cfg.SOLVER.IMS_PER_BATCH)
        length += (
            f" (SOLVER.EPOCHS {cfg.SOLVER.EPOCHS} x {iters_per_epoch} iterations per epoch: "
            f"{num_images} images at IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH})"
        )
    else:
        length += " (SOLVER.MAX_ITER)"
    evaluate = cfg.TEST.EVAL_PERIOD
    return (
        f"Schedule: {length}, warm-up {cfg.SOLVER.WARMUP_ITERS} iterations, "
        f"{cfg.SOLVER.LR_SCHEDULER_NAME} from lr {cfg.SOLVER.BASE_LR}, checkpoint every "
        f"{cfg.SOLVER.CHECKPOINT_PERIOD} iterations, "
        + (f"evaluate every {evaluate} iterations" if evaluate > 0 else "evaluate at the end")
    )


def _point_head_follows_class_count(cfg: CfgNode) -> CfgNode:
    """``MODEL.POINT_HEAD.NUM_CLASSES`` set to ``MODEL.ROI_HEADS.NUM_CLASSES``; a changed clone
    or ``cfg`` itself.

    Why: PointRend's point head predicts one logit per class of the RoI heads and asserts the two
    counts are equal, but the class count is often filled from the dataset's ``dataset.json`` or
    given on the command line: one count, followed everywhere, instead of a crash at model build.
    """
    if cfg.MODEL.POINT_HEAD.NUM_CLASSES == cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        return cfg
    if cfg.MODEL.ROI_MASK_HEAD.NAME.endswith("PointRendMaskHead"):
        logger.info(
            "MODEL.POINT_HEAD.NUM_CLASSES %d follows MODEL.ROI_HEADS.NUM_CLASSES %d",
            cfg.MODEL.POINT_HEAD.NUM_CLASSES,
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        )
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.POINT_HEAD.NUM_CLASSES = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if was_frozen:
        cfg.freeze()
    return cfg


def _unshare_sequences(node: CfgNode) -> None:
    """Give every list/tuple value its own object, in place.

    Why: detectron2's defaults share tuple objects between keys (Python folds equal constant
    tuples into one), so ``cfg.dump()`` writes YAML anchors and aliases (``*id001``) into the
    ``config.yaml`` a run saves, and the safe loader refuses aliases: the saved config could not
    be loaded again. Fresh objects dump as plain values.
    """
    for key, value in node.items():
        if isinstance(value, CfgNode):
            _unshare_sequences(value)
        elif isinstance(value, (list, tuple)):
            node[key] = _fresh_sequence(value)


def _fresh_sequence(value: list | tuple) -> list | tuple:
    """A new list/tuple (nested ones new too) with the same items."""
    items = [_fresh_sequence(x) if isinstance(x, (list, tuple)) else x for x in value]
    return items if isinstance(value, list) else tuple(items)


def _uses_epochs(cfg: CfgNode) -> bool:
    """Whether any length or period is counted in epochs (then the image count is needed)."""
    return any(lookup_key(cfg, epochs_key) > 0 for _, epochs_key in ITERATION_EPOCH_KEYS)
