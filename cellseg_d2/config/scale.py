"""The input scale: the factor images are resized by so cells reach a chosen size.

Why: a Mask R-CNN finds cells of the sizes its anchors and feature levels were built for. Data
sets differ (a 20x nucleus is ~15 px, a 40x one ~30 px; dsb2018 mixes both), and detectron2's
short-edge resize normalises image sizes, not cell sizes. ``INPUT.CELL_DIAMETER`` names the
median cell diameter the model should see, as Cellpose's ``diameter`` does; the factor
``INPUT.SCALE = CELL_DIAMETER / median training diameter`` is computed once, when the training
config is finished, and saved with the run's ``config.yaml`` so evaluation and prediction resize
by the very same factor without the training data. Slides are read at
:func:`model_pixel_size` = ``INPUT.PIXEL_SIZE / INPUT.SCALE``.

``INPUT.SCALE`` 0 means "off": the short-edge resize of ``INPUT.MIN_SIZE_*`` as before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from detectron2.config import CfgNode

from cellseg_d2.errors import ConfigError

__all__ = [
    "anchor_fit_warning",
    "input_scale",
    "model_pixel_size",
    "resolve_input_scale",
    "scale_for_diameter",
]

logger = logging.getLogger(__name__)

#: Computed and configured factors further apart than this (relative) are reported.
_MISMATCH = 0.01


def _positive_finite(value: float, key: str) -> float:
    """``value`` as a float that is finite and >= 0; else a ConfigError naming ``key``."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key} must be a finite number >= 0, got {value}")
    return value


def scale_for_diameter(target_diameter: float, median_diameter: float) -> float:
    """The resize factor that brings cells of ``median_diameter`` px to ``target_diameter`` px.

    Why a function: the stats tool's advice and the config finishing use the same rule.

    Raises:
        ConfigError: a non-positive target, or a median that is not positive (no instances).
    """
    target = _positive_finite(target_diameter, "INPUT.CELL_DIAMETER")
    if target == 0:
        raise ConfigError("INPUT.CELL_DIAMETER must be positive to compute a scale")
    if not math.isfinite(median_diameter) or median_diameter <= 0:
        raise ConfigError(
            f"the median training cell diameter is {median_diameter}: no instances to scale "
            "INPUT.CELL_DIAMETER from"
        )
    return target / float(median_diameter)


def input_scale(cfg: CfgNode) -> float:
    """The factor images are resized by before the model; 0 when the scale is off.

    Why not read ``cfg.INPUT.SCALE`` directly: a config that asks for a cell diameter but was
    never finished with the training data has no factor yet, and resizing by nothing would
    silently run the model at the wrong scale.

    Raises:
        ConfigError: ``INPUT.CELL_DIAMETER`` is set but ``INPUT.SCALE`` was not computed, or
            either is negative or not finite.
    """
    scale = _positive_finite(cfg.INPUT.SCALE, "INPUT.SCALE")
    diameter = _positive_finite(cfg.INPUT.CELL_DIAMETER, "INPUT.CELL_DIAMETER")
    if diameter > 0 and scale == 0:
        raise ConfigError(
            f"INPUT.CELL_DIAMETER is {diameter} but INPUT.SCALE was never computed from the "
            "training data: use the config.yaml saved by the training run, or set INPUT.SCALE"
        )
    return scale


def model_pixel_size(cfg: CfgNode) -> float:
    """Micrometres per pixel of what the model sees: ``INPUT.PIXEL_SIZE / INPUT.SCALE``.

    Why: slides are read at the model's pixel size; with a scale on, the training images were
    resized by it, so the model saw a finer (scale > 1) or coarser grid than the data's own.
    0 when the pixel size is unknown; ``INPUT.PIXEL_SIZE`` itself when the scale is off.

    Raises:
        ConfigError: see :func:`input_scale`.
    """
    pixel_size = _positive_finite(cfg.INPUT.PIXEL_SIZE, "INPUT.PIXEL_SIZE")
    scale = input_scale(cfg)
    return pixel_size / scale if scale > 0 else pixel_size


def anchor_fit_warning(cfg: CfgNode, diameter: float) -> str | None:
    """A warning when cells of ``diameter`` px (at the model's scale) fall outside the anchor
    sizes ``MODEL.ANCHOR_GENERATOR.SIZES``; None when they fit.

    Why: scaling cells to a diameter no anchor matches loses them in the RPN without an error.
    """
    sizes = [float(s) for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES for s in level]
    if not sizes or min(sizes) <= diameter <= max(sizes):
        return None
    return (
        f"the median cell diameter at the model's scale, {diameter:.1f} px, is outside "
        f"MODEL.ANCHOR_GENERATOR.SIZES ({min(sizes):g}..{max(sizes):g} px): change "
        "INPUT.CELL_DIAMETER or the anchor sizes"
    )


def resolve_input_scale(
    cfg: CfgNode, median_diameter: Callable[[CfgNode], float] | None = None
) -> CfgNode:
    """Fill ``INPUT.SCALE`` from ``INPUT.CELL_DIAMETER`` and the training data; log the rule.

    Rules:
        - ``INPUT.CELL_DIAMETER`` 0: nothing to do (``INPUT.SCALE`` as configured).
        - ``INPUT.SCALE`` 0 and ``median_diameter`` given: ``INPUT.SCALE = CELL_DIAMETER /
          median_diameter(cfg)``, logged with both numbers.
        - ``INPUT.SCALE`` already set (a saved run config, or the user's): kept; when
          ``median_diameter`` is given and the two disagree by more than 1%, a warning.
        - no ``median_diameter`` (prediction): left as it is; :func:`input_scale` refuses an
          uncomputed one when it is used.
        A median diameter that falls outside the anchor sizes once scaled is warned about.

    Args:
        cfg: a loaded config (frozen or not; not changed).
        median_diameter: the median equivalent diameter of the ``DATASETS.TRAIN`` instances in
            pixels (e.g. :func:`cellseg_d2.data.stats.median_train_diameter`), called at most
            once; the config floor cannot read data itself.

    Returns:
        ``cfg`` itself when nothing changes, else a changed clone (frozen if ``cfg`` was).

    Raises:
        ConfigError: negative or non-finite values, or no training instances.
    """
    target = _positive_finite(cfg.INPUT.CELL_DIAMETER, "INPUT.CELL_DIAMETER")
    scale = _positive_finite(cfg.INPUT.SCALE, "INPUT.SCALE")
    if target == 0 or median_diameter is None:
        return cfg
    median = float(median_diameter(cfg))
    computed = scale_for_diameter(target, median)
    warning = anchor_fit_warning(cfg, median * (scale or computed))
    if warning:
        logger.warning(warning)
    if scale > 0:
        if abs(scale - computed) > _MISMATCH * computed:
            logger.warning(
                "INPUT.SCALE %g is kept, but INPUT.CELL_DIAMETER %g over the median training "
                "cell diameter %.2f px gives %.4f",
                scale,
                target,
                median,
                computed,
            )
        return cfg
    logger.info(
        "INPUT.SCALE %.4f = INPUT.CELL_DIAMETER %g px / median training cell diameter %.2f px "
        "(equivalent diameter of the %s instances)",
        computed,
        target,
        median,
        "+".join(cfg.DATASETS.TRAIN),
    )
    was_frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.SCALE = computed
    if was_frozen:
        cfg.freeze()
    return cfg
