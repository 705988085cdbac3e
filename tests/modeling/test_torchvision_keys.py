"""The torchvision -> detectron2 key rules: hand-checked names, every key of both torchvision
variants named once, and the background class moved to detectron2's layout."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

from cellseg_d2.modeling.torchvision_keys import (
    CLASS_SCORE_KEY,
    VARIANT_MARKERS,
    class_layout,
    detectron2_key,
)

# (variant, torchvision key, detectron2 key), written out by hand from the two libraries' modules.
KNOWN = [
    ("v1", "backbone.body.conv1.weight", "backbone.bottom_up.stem.conv1.weight"),
    ("v1", "backbone.body.bn1.running_mean", "backbone.bottom_up.stem.conv1.norm.running_mean"),
    ("v1", "backbone.body.layer1.0.conv2.weight", "backbone.bottom_up.res2.0.conv2.weight"),
    ("v1", "backbone.body.layer4.2.bn3.bias", "backbone.bottom_up.res5.2.conv3.norm.bias"),
    (
        "v1",
        "backbone.body.layer2.0.downsample.1.running_var",
        "backbone.bottom_up.res3.0.shortcut.norm.running_var",
    ),
    ("v1", "backbone.fpn.inner_blocks.0.0.weight", "backbone.fpn_lateral2.weight"),
    ("v1", "backbone.fpn.layer_blocks.3.0.bias", "backbone.fpn_output5.bias"),
    ("v2", "backbone.fpn.inner_blocks.1.1.weight", "backbone.fpn_lateral3.norm.weight"),
    ("v1", "rpn.head.conv.0.0.weight", "proposal_generator.rpn_head.conv.weight"),
    ("v2", "rpn.head.conv.1.0.weight", "proposal_generator.rpn_head.conv.conv1.weight"),
    ("v1", "rpn.head.cls_logits.bias", "proposal_generator.rpn_head.objectness_logits.bias"),
    ("v1", "rpn.head.bbox_pred.weight", "proposal_generator.rpn_head.anchor_deltas.weight"),
    ("v1", "roi_heads.box_head.fc6.weight", "roi_heads.box_head.fc1.weight"),
    ("v1", "roi_heads.box_head.fc7.bias", "roi_heads.box_head.fc2.bias"),
    ("v2", "roi_heads.box_head.5.weight", "roi_heads.box_head.fc1.weight"),
    ("v2", "roi_heads.box_head.0.0.weight", "roi_heads.box_head.conv1.weight"),
    ("v2", "roi_heads.box_head.3.1.running_mean", "roi_heads.box_head.conv4.norm.running_mean"),
    ("v1", CLASS_SCORE_KEY, CLASS_SCORE_KEY),
    ("v1", "roi_heads.mask_head.0.0.weight", "roi_heads.mask_head.mask_fcn1.weight"),
    ("v2", "roi_heads.mask_head.3.1.bias", "roi_heads.mask_head.mask_fcn4.norm.bias"),
    ("v1", "roi_heads.mask_predictor.conv5_mask.weight", "roi_heads.mask_head.deconv.weight"),
    (
        "v1",
        "roi_heads.mask_predictor.mask_fcn_logits.bias",
        "roi_heads.mask_head.predictor.bias",
    ),
]


@pytest.mark.parametrize(("variant", "key", "expected"), KNOWN)
def test_known_names(variant: str, key: str, expected: str) -> None:
    assert detectron2_key(key, variant) == expected


def test_keys_of_neither_model_have_no_name() -> None:
    for key in ("conv1.weight", "backbone.body.fc.weight", "roi_heads.box_head.fc6", ""):
        assert detectron2_key(key, "v1") is None


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_every_torchvision_key_gets_one_distinct_name(variant: str) -> None:
    builder = maskrcnn_resnet50_fpn if variant == "v1" else maskrcnn_resnet50_fpn_v2
    model = builder(weights=None, weights_backbone=None, num_classes=3)
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    names = [detectron2_key(key, variant) for key in keys]
    assert None not in names, [k for k, n in zip(keys, names) if n is None][:5]
    assert len(set(names)) == len(keys)
    # Each layout carries its own marker and not the other's.
    other = "v2" if variant == "v1" else "v1"
    assert VARIANT_MARKERS[variant] in keys and VARIANT_MARKERS[other] not in keys


def test_background_class_moves_last_and_loses_its_box_and_mask() -> None:
    num_classes = 3  # foreground; torchvision has num_classes + 1 rows, background first
    scores = torch.arange(num_classes + 1, dtype=torch.float32)[:, None].expand(-1, 5)
    moved = class_layout("roi_heads.box_predictor.cls_score.weight", scores)
    assert moved[:, 0].tolist() == [1.0, 2.0, 3.0, 0.0]
    deltas = torch.arange(4 * (num_classes + 1), dtype=torch.float32)
    assert class_layout("roi_heads.box_predictor.bbox_pred.bias", deltas).tolist() == list(
        range(4, 4 * (num_classes + 1))
    )
    masks = torch.arange(num_classes + 1, dtype=torch.float32)
    assert class_layout("roi_heads.mask_head.predictor.bias", masks).tolist() == [1.0, 2.0, 3.0]
    other = torch.randn(4, 4)
    assert class_layout("roi_heads.box_head.fc1.weight", other) is other
