"""Convert torchvision Mask R-CNN weights (v1 and v2) into a detectron2 checkpoint and config.

The seed study fine-tuned torchvision's COCO ``maskrcnn_resnet50_fpn`` / ``_v2``. This module
turns such a state dict (torchvision's cache file, or a fine-tuned checkpoint of those models)
into a detectron2 checkpoint plus the YAML that rebuilds the *same* network in cellseg-d2, so
the seed's exact starting point can be fine-tuned, evaluated and predicted here.

What has to line up, and how:

- keys: torchvision's module names are renamed to detectron2's (``backbone.body.layer1`` ->
  ``backbone.bottom_up.res2``, ``fpn.inner_blocks`` -> ``fpn_lateral``, ``fc6``/``fc7`` ->
  ``fc1``/``fc2``, ...; the rules are in :mod:`cellseg_d2.modeling.torchvision_keys`). The file
  is first loaded into a torchvision model of the detected variant, which upgrades old key
  layouts (torchvision's own version hooks) and rejects files with missing or unknown keys.
- classes: torchvision puts the background at class 0 of ``cls_score`` and predicts boxes and
  masks for it too; detectron2 puts it last and predicts neither. Rows are reordered and sliced.
- input: torchvision normalises RGB in [0, 1] with ImageNet mean/std; detectron2 normalises the
  0-255 image, so mean and std are multiplied by 255 and ``INPUT.FORMAT`` is RGB.
- structure: stride in the 3x3 conv (``STRIDE_IN_1X1: False``), anchors 32..512 per level
  rounded to whole pixels (:class:`~cellseg_d2.modeling.RoundedAnchorGenerator`), RoIAlign with
  ``aligned=False`` and sampling ratio 2, v2's two-conv RPN head, 4-conv + 1-FC box head and
  BatchNorm in FPN and heads, torchvision's RPN/RoI test settings (NMS 0.7 / 0.5, 1000 proposals,
  100 detections).

NOTE: BatchNorm statistics are kept, not folded: the backbone uses detectron2's ``FrozenBN``
(exactly ``BatchNorm2d`` in eval mode); v2's FPN and heads use ``BN`` as torchvision trains them.

Known remaining differences (covered with explicit tolerances in
tests/modeling/test_torchvision_weights.py): torchvision pastes 28x28 masks into the image at
integer box corners, detectron2 with bilinear ``grid_sample`` at the exact float box, so pasted
masks differ by about a pixel along their border (the 28x28 mask probabilities themselves
agree); torchvision drops boxes smaller than 1e-3 px (RPN) / 1e-2 px (RoI heads), detectron2
only empty ones; and it normalises before resizing where detectron2 resizes the uint8 image
first, which only matters when the test size differs from the image size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from cellseg_d2.errors import CellSegError
from cellseg_d2.modeling.torchvision_keys import (
    CLASS_SCORE_KEY,
    VARIANT_MARKERS,
    class_layout,
    detectron2_key,
)
from cellseg_d2.utils.files import atomic_write

__all__ = [
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
    "ConvertedWeights",
    "TorchvisionWeightsError",
    "convert_state_dict",
    "convert_torchvision_weights",
    "detectron2_config",
    "load_torchvision_state_dict",
]

logger = logging.getLogger(__name__)

# torchvision's GeneralizedRCNNTransform statistics (RGB, [0, 1]) in detectron2's 0-255 units.
TORCHVISION_PIXEL_MEAN = [123.675, 116.28, 103.53]  # 255 x [0.485, 0.456, 0.406]
TORCHVISION_PIXEL_STD = [58.395, 57.12, 57.375]  # 255 x [0.229, 0.224, 0.225]

BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "Base-CellSeg-RCNN-FPN.yaml"


class TorchvisionWeightsError(CellSegError, ValueError):
    """The file is not a torchvision Mask R-CNN (v1/v2) state dict that can be converted, or the
    converted files cannot be written there."""


@dataclass(frozen=True)
class ConvertedWeights:
    """What :func:`convert_torchvision_weights` wrote.

    Attributes:
        variant: ``"v1"`` (``maskrcnn_resnet50_fpn``) or ``"v2"`` (``maskrcnn_resnet50_fpn_v2``).
        num_classes: foreground classes (torchvision's ``num_classes`` minus the background).
        weights: the detectron2 checkpoint (``{"model": state_dict, ...}``).
        config: the YAML that builds the matching detectron2 model and loads ``weights``.
    """

    variant: str
    num_classes: int
    weights: Path
    config: Path


def load_torchvision_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision state dict safely (``weights_only``), unwrapping common containers.

    Accepts the bare state dict torchvision caches, ``{"model": ...}`` and ``{"state_dict": ...}``
    training checkpoints, and ``module.``-prefixed keys from (Distributed)DataParallel.

    Raises:
        TorchvisionWeightsError: unreadable file, or no tensor state dict inside; names the file.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safe-unpickler errors all mean "not this format"
        raise TorchvisionWeightsError(
            f"{path}: cannot read as torch weights ({type(exc).__name__}: {exc})"
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not loaded:
        raise TorchvisionWeightsError(f"{path}: no state dict found (got {type(loaded).__name__})")
    state = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise TorchvisionWeightsError(
                f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor; "
                "expected a Mask R-CNN state dict"
            )
        state[key.removeprefix("module.")] = value
    return state


def _detect_variant(state: dict[str, torch.Tensor], source: str) -> str:
    found = [variant for variant, key in VARIANT_MARKERS.items() if key in state]
    if len(found) != 1 or CLASS_SCORE_KEY not in state:
        raise TorchvisionWeightsError(
            f"{source}: not a torchvision maskrcnn_resnet50_fpn (v1) or _v2 state dict: "
            f"expected '{CLASS_SCORE_KEY}' and one of "
            f"{sorted(VARIANT_MARKERS.values())}; first keys: {list(state)[:5]}"
        )
    return found[0]


def _canonical_state(
    state: dict[str, torch.Tensor], variant: str, num_classes: int, source: str
) -> dict[str, torch.Tensor]:
    """Load into torchvision's own model to upgrade old key layouts and validate every key."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    builder = maskrcnn_resnet50_fpn if variant == "v1" else maskrcnn_resnet50_fpn_v2
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    try:
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise TorchvisionWeightsError(
            f"{source}: does not fit maskrcnn_resnet50_fpn_{variant}: {exc}"
        ) from exc
    # Checkpoints of FrozenBatchNorm2d models carry no num_batches_tracked; it holds no weights.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise TorchvisionWeightsError(
            f"{source}: does not fit maskrcnn_resnet50_fpn_{variant}: "
            f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def convert_state_dict(
    state: dict[str, torch.Tensor], source: str = "state dict"
) -> tuple[dict[str, torch.Tensor], str, int]:
    """Rename and reorder a torchvision Mask R-CNN state dict into detectron2's.

    Args:
        state: torchvision ``maskrcnn_resnet50_fpn`` or ``_v2`` weights (any key-layout version).
        source: what to call the input in error messages (the file name).

    Returns:
        ``(detectron2_state_dict, variant, num_classes)``, ``num_classes`` without background.

    Raises:
        TorchvisionWeightsError: unknown layout, missing or unexpected keys, wrong shapes.
    """
    variant = _detect_variant(state, source)
    num_classes = int(state[CLASS_SCORE_KEY].shape[0]) - 1
    if num_classes < 1:
        raise TorchvisionWeightsError(f"{source}: cls_score has no foreground class")
    canonical = _canonical_state(state, variant, num_classes, source)
    converted = {}
    for key, tensor in canonical.items():
        d2_key = detectron2_key(key, variant)
        if d2_key is None:  # every key of a validated torchvision model has a rule: a bug guard
            raise TorchvisionWeightsError(f"{source}: no detectron2 name for '{key}'")
        converted[d2_key] = class_layout(d2_key, tensor).clone()
    return converted, variant, num_classes


def detectron2_config(
    variant: str, num_classes: int, weights: str, base: Path | None = BASE_CONFIG
) -> dict[str, Any]:
    """The config (as a YAML-ready dict) of the detectron2 model equal to torchvision's.

    Every model setting is spelled out, so the file documents the network by itself; data,
    solver and input augmentation come from ``base`` (the project's base config) when given.

    Args:
        variant: ``"v1"`` or ``"v2"``.
        num_classes: foreground classes.
        weights: ``MODEL.WEIGHTS`` (the converted checkpoint).
        base: the config to inherit from (``_BASE_``), or ``None`` for none.
    """
    # Long by design: the config written out key by key, as it reads in the YAML file.
    v2 = variant == "v2"
    head_norm = "BN" if v2 else ""
    pooler = {"POOLER_TYPE": "ROIAlign", "POOLER_SAMPLING_RATIO": 2}  # torchvision: aligned=False
    model = {
        "META_ARCHITECTURE": "CellRCNN",
        "MASK_ON": True,
        "WEIGHTS": weights,
        "PIXEL_MEAN": TORCHVISION_PIXEL_MEAN,
        "PIXEL_STD": TORCHVISION_PIXEL_STD,
        "BACKBONE": {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 2},
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            "STRIDE_IN_1X1": False,
            "NORM": "FrozenBN",
        },
        "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "NORM": head_norm},
        "ANCHOR_GENERATOR": {
            "NAME": "RoundedAnchorGenerator",
            "SIZES": [[32], [64], [128], [256], [512]],
            "ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
        },
        "RPN": {
            "IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
            "CONV_DIMS": [-1, -1] if v2 else [-1],
            "NMS_THRESH": 0.7,
            "PRE_NMS_TOPK_TRAIN": 2000,
            "POST_NMS_TOPK_TRAIN": 2000,
            "PRE_NMS_TOPK_TEST": 1000,
            "POST_NMS_TOPK_TEST": 1000,
            "SMOOTH_L1_BETA": 1.0 / 9,
        },
        "ROI_HEADS": {
            "NAME": "StandardROIHeads",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "NUM_CLASSES": num_classes,
            "SCORE_THRESH_TEST": 0.05,
            "NMS_THRESH_TEST": 0.5,
            "BATCH_SIZE_PER_IMAGE": 512,
        },
        "ROI_BOX_HEAD": {
            "NAME": "FastRCNNConvFCHead",
            "NUM_CONV": 4 if v2 else 0,
            "NUM_FC": 1 if v2 else 2,
            "FC_DIM": 1024,
            "NORM": head_norm,
            "POOLER_RESOLUTION": 7,
            "SMOOTH_L1_BETA": 1.0 / 9,
            **pooler,
        },
        "ROI_MASK_HEAD": {
            "NAME": "MaskRCNNConvUpsampleHead",
            "NUM_CONV": 4,
            "NORM": head_norm,
            "POOLER_RESOLUTION": 14,
            **pooler,
        },
    }
    config: dict[str, Any] = {}
    if base is not None:
        config["_BASE_"] = str(base)
    config["MODEL"] = model
    config["INPUT"] = {"FORMAT": "RGB", "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333}
    config["TEST"] = {"DETECTIONS_PER_IMAGE": 100}
    return config


def _check_against_model(config_path: Path, state: dict[str, torch.Tensor], source: str) -> None:
    """Build the detectron2 model from the written config and load the weights strictly."""
    from detectron2.modeling import build_model

    from cellseg_d2.config import build_config

    cfg = build_config(config_path, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:  # a mapping bug, not a user error
        raise RuntimeError(
            f"converted {source} does not fit the detectron2 model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def convert_torchvision_weights(
    source: str | os.PathLike, output: str | os.PathLike, config: str | os.PathLike | None = None
) -> ConvertedWeights:
    """Convert a torchvision Mask R-CNN weights file into a detectron2 checkpoint and config.

    Both files are written atomically; the config's ``MODEL.WEIGHTS`` is the checkpoint's
    absolute path and its ``_BASE_`` the project's base config (path relative to the YAML).

    Args:
        source: torchvision state dict (e.g. ``maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``).
        output: the detectron2 checkpoint to write (``.pth``).
        config: the YAML to write; default ``output`` with ``.yaml``.

    Raises:
        TorchvisionWeightsError: the source is not a convertible file, or an output cannot be
            written (the file is named in the message).
    """
    source = str(source)
    output = Path(output)
    config_path = Path(config) if config is not None else output.with_suffix(".yaml")
    state, variant, num_classes = convert_state_dict(load_torchvision_state_dict(source), source)
    try:
        _write_converted(state, variant, num_classes, source, output, config_path)
    except OSError as exc:  # an output folder that cannot be written
        raise TorchvisionWeightsError(
            f"cannot write {exc.filename or output}: {exc.strerror or exc}"
        ) from exc
    _check_against_model(config_path, state, source)
    logger.info(
        "converted %s (torchvision %s, %d classes) -> %s + %s",
        source, variant, num_classes, output, config_path,
    )  # fmt: skip
    return ConvertedWeights(variant, num_classes, output, config_path)


def _write_converted(
    state: dict[str, torch.Tensor],
    variant: str,
    num_classes: int,
    source: str,
    output: Path,
    config_path: Path,
) -> None:
    """Write the detectron2 checkpoint and its config, each atomically."""
    with atomic_write(output) as handle:
        torch.save(
            {"model": state, "__author__": f"torchvision maskrcnn_resnet50_fpn {variant}"}, handle
        )
    base = None
    if BASE_CONFIG.is_file():
        base = Path(os.path.relpath(BASE_CONFIG, config_path.resolve().parent))
    else:
        logger.warning("%s not found: the config has model settings only (no _BASE_)", BASE_CONFIG)
    cfg_dict = detectron2_config(variant, num_classes, str(output.resolve()), base)
    cfg_dict["OUTPUT_DIR"] = f"output/{config_path.stem}"
    header = (
        f"# Converted from torchvision maskrcnn_resnet50_fpn{'_v2' if variant == 'v2' else ''} "
        f"weights {Path(source).name} by tools/convert_torchvision_weights.py.\n"
        "# The model settings reproduce torchvision's network and post-processing exactly;\n"
        "# data, solver and augmentation come from _BASE_. Override on the command line.\n"
    )
    with atomic_write(config_path, "w") as handle:
        handle.write(header + yaml.safe_dump(cfg_dict, sort_keys=False, default_flow_style=None))
