"""How torchvision's Mask R-CNN (v1 and v2) names and lays out its weights, in detectron2's terms.

Pure rules, no file access: which key tells the two variants apart, the renaming from
torchvision's module names to detectron2's (``backbone.body.layer1`` -> ``backbone.bottom_up.res2``,
``fpn.inner_blocks`` -> ``fpn_lateral``, ``fc6``/``fc7`` -> ``fc1``/``fc2``, ...), and the move
of torchvision's background class (row 0, with boxes and masks) to detectron2's layout
(background last in ``cls_score``, no box or mask for it). Reading, validating and writing the
files is :mod:`cellseg_d2.modeling.torchvision_weights`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import torch

__all__ = [
    "CLASS_SCORE_KEY",
    "VARIANT_MARKERS",
    "class_layout",
    "detectron2_key",
]

#: torchvision's classifier weight: its rows are the classes, background first.
CLASS_SCORE_KEY = "roi_heads.box_predictor.cls_score.weight"

#: A key only one layout has: v1's two-FC box head, v2's 4-conv + 1-FC box head.
VARIANT_MARKERS = {
    "v1": "roi_heads.box_head.fc6.weight",
    "v2": "roi_heads.box_head.5.weight",
}

_FPN = {"inner": "lateral", "layer": "output"}

#: A rule's replacement: detectron2's key from the match of torchvision's.
_Rename = Callable[[re.Match[str]], str]


def _rename_rules(variant: str) -> list[tuple[str, _Rename]]:
    """(pattern, replacement) pairs from torchvision to detectron2 names; first match wins."""
    # Long by design: a table of key renames, one line per torchvision -> detectron2 rule.
    rpn_conv = (
        (lambda m: f"proposal_generator.rpn_head.conv.{m[2]}")
        if variant == "v1"
        else (lambda m: f"proposal_generator.rpn_head.conv.conv{m[1]}.{m[2]}")
    )
    return [
        (r"backbone\.body\.conv1\.weight", lambda m: "backbone.bottom_up.stem.conv1.weight"),
        (r"backbone\.body\.bn1\.(.+)", lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
        (
            r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight",
            lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
        ),
        (
            r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(.+)",
            lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
        ),
        (
            r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight",
            lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
        ),
        (
            r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(.+)",
            lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
        ),
        (
            r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\.(.+)",
            lambda m: f"backbone.fpn_{_FPN[m[1]]}{int(m[2]) + 2}.{m[3]}",
        ),
        (
            r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.1\.(.+)",
            lambda m: f"backbone.fpn_{_FPN[m[1]]}{int(m[2]) + 2}.norm.{m[3]}",
        ),
        (r"rpn\.head\.conv\.(\d)\.0\.(.+)", rpn_conv),
        (
            r"rpn\.head\.cls_logits\.(.+)",
            lambda m: f"proposal_generator.rpn_head.objectness_logits.{m[1]}",
        ),
        (
            r"rpn\.head\.bbox_pred\.(.+)",
            lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}",
        ),
        (
            r"roi_heads\.box_head\.fc([67])\.(.+)",
            lambda m: f"roi_heads.box_head.fc{int(m[1]) - 5}.{m[2]}",
        ),
        (r"roi_heads\.box_head\.5\.(.+)", lambda m: f"roi_heads.box_head.fc1.{m[1]}"),
        (
            r"roi_heads\.box_head\.(\d)\.0\.(.+)",
            lambda m: f"roi_heads.box_head.conv{int(m[1]) + 1}.{m[2]}",
        ),
        (
            r"roi_heads\.box_head\.(\d)\.1\.(.+)",
            lambda m: f"roi_heads.box_head.conv{int(m[1]) + 1}.norm.{m[2]}",
        ),
        (r"roi_heads\.box_predictor\.(.+)", lambda m: f"roi_heads.box_predictor.{m[1]}"),
        (
            r"roi_heads\.mask_head\.(\d)\.0\.(.+)",
            lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}",
        ),
        (
            r"roi_heads\.mask_head\.(\d)\.1\.(.+)",
            lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.norm.{m[2]}",
        ),
        (
            r"roi_heads\.mask_predictor\.conv5_mask\.(.+)",
            lambda m: f"roi_heads.mask_head.deconv.{m[1]}",
        ),
        (
            r"roi_heads\.mask_predictor\.mask_fcn_logits\.(.+)",
            lambda m: f"roi_heads.mask_head.predictor.{m[1]}",
        ),
    ]


@functools.cache
def _compiled_rules(variant: str) -> tuple[tuple[re.Pattern[str], _Rename], ...]:
    return tuple((re.compile(pattern), rename) for pattern, rename in _rename_rules(variant))


def detectron2_key(key: str, variant: str) -> str | None:
    """detectron2's name for a torchvision key of a (canonical, current-layout) state dict.

    Args:
        key: a key of torchvision's ``maskrcnn_resnet50_fpn`` (``variant="v1"``) or ``_v2``.
        variant: ``"v1"`` or ``"v2"`` (the RPN conv is named differently in each).

    Returns:
        The detectron2 key, or ``None`` when no rule names it (a key of neither model).
    """
    for pattern, rename in _compiled_rules(variant):
        match = pattern.fullmatch(key)
        if match:
            return rename(match)
    return None


def class_layout(d2_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Move torchvision's background class (row 0) to detectron2's layout.

    Why: torchvision's classifier has the background first and predicts a box and a mask for
    it; detectron2's has it last and predicts neither. Other tensors pass through unchanged.

    Args:
        d2_key: the tensor's detectron2 key (from :func:`detectron2_key`).
        tensor: torchvision's tensor of that key.
    """
    if d2_key.startswith("roi_heads.box_predictor.cls_score."):
        return torch.cat([tensor[1:], tensor[:1]])  # background last
    if d2_key.startswith("roi_heads.box_predictor.bbox_pred."):
        return tensor[4:]  # no box regression for the background
    if d2_key.startswith("roi_heads.mask_head.predictor."):
        return tensor[1:]  # no mask for the background
    return tensor
