"""CellRCNN and its TTA apply MODEL.CELLSEG.MASK_THRESHOLD, and otherwise do what detectron2
does: the same boxes, and at threshold 0.5 exactly detectron2's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA, build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

from cellseg_d2.config import load_cellseg_config
from cellseg_d2.modeling import CellRCNN, CellRCNNWithTTA
from tests.conftest import INSTANT_CONFIG

SIZE = 96
# Small and quick: few proposals and detections are enough to see every behaviour.
QUICK = ["MODEL.RPN.POST_NMS_TOPK_TEST", 50, "TEST.DETECTIONS_PER_IMAGE", 20]


def _model(*opts: object) -> torch.nn.Module:
    """The instant-test network with random weights, keeping every detection."""
    cfg = load_cellseg_config(
        INSTANT_CONFIG,
        ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *QUICK, *opts],
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _image() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 255, (3, SIZE, SIZE), dtype=np.uint8))


def _tta_cfg(*opts: object) -> CfgNode:
    cfg = load_cellseg_config(
        INSTANT_CONFIG,
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
            "TEST.AUG.MIN_SIZES", (80,),  # a rescale and a flip: both inverse paths
            "TEST.AUG.MAX_SIZE", 192,
            *QUICK,
            "TEST.AUG.FLIP", True,
            *opts,
        ],
    )  # fmt: skip
    cfg.freeze()
    return cfg


def _assert_same_instances(a: Instances, b: Instances) -> None:
    assert a.image_size == b.image_size
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert a.has("pred_masks") == b.has("pred_masks")
    if a.has("pred_masks"):
        assert torch.equal(a.pred_masks, b.pred_masks)


def test_inference_binarises_at_the_configured_threshold() -> None:
    model = _model("MODEL.CELLSEG.MASK_THRESHOLD", 0.6)
    assert isinstance(model, CellRCNN) and model.mask_threshold == 0.6
    inputs = [{"image": _image(), "height": 2 * SIZE, "width": 3 * SIZE // 2}]
    with torch.no_grad():
        raw = model.inference(inputs, do_postprocess=False)[0]
        out = model(inputs)[0]["instances"]
    assert len(raw) > 0
    expected = detector_postprocess(raw, 2 * SIZE, 3 * SIZE // 2, mask_threshold=0.6)
    _assert_same_instances(out, expected)
    at_half = detector_postprocess(raw, 2 * SIZE, 3 * SIZE // 2, mask_threshold=0.5)
    assert int(out.pred_masks.sum()) < int(at_half.pred_masks.sum())


def test_output_size_defaults_to_the_network_input() -> None:
    model = _model()
    with torch.no_grad():
        out = model([{"image": _image()}])[0]["instances"]
    assert out.image_size == (SIZE, SIZE) and out.pred_masks.shape[1:] == (SIZE, SIZE)


def test_threshold_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="MODEL.CELLSEG.MASK_THRESHOLD must be in"):
        _model("MODEL.CELLSEG.MASK_THRESHOLD", -0.1)


def test_tta_at_half_is_detectron2s_tta_and_the_threshold_only_moves_mask_borders() -> None:
    model = _model()
    cfg = _tta_cfg()
    inputs = [{"image": _image(), "height": SIZE, "width": SIZE}]
    tta = CellRCNNWithTTA(cfg, model)
    with torch.no_grad():
        upstream = GeneralizedRCNNWithTTA(cfg, model)(inputs)[0]["instances"]
        at_half = tta(inputs)[0]["instances"]
        model.mask_threshold = 0.7
        higher = tta(inputs)[0]["instances"]
    assert len(at_half) > 0
    _assert_same_instances(at_half, upstream)
    torch.testing.assert_close(higher.pred_boxes.tensor, upstream.pred_boxes.tensor)
    # A higher threshold keeps a subset of the pixels, strictly fewer overall.
    assert not (higher.pred_masks & ~upstream.pred_masks).any()
    assert int(higher.pred_masks.sum()) < int(upstream.pred_masks.sum())
    # The caller's config is left as it was; only the TTA's own copy drops MASK_ON.
    assert cfg.MODEL.MASK_ON is True and tta.cfg.MODEL.MASK_ON is False


def test_tta_without_masks_returns_boxes_only() -> None:
    model = _model("MODEL.MASK_ON", False)
    cfg = _tta_cfg("MODEL.MASK_ON", False)
    inputs = [{"image": _image(), "height": SIZE, "width": SIZE}]
    with torch.no_grad():
        ours = CellRCNNWithTTA(cfg, model)(inputs)[0]["instances"]
        upstream = GeneralizedRCNNWithTTA(cfg, model)(inputs)[0]["instances"]
    assert len(ours) > 0 and not ours.has("pred_masks")
    _assert_same_instances(ours, upstream)


def test_tta_of_a_plain_generalized_rcnn_keeps_detectron2s_half() -> None:
    model = _model("MODEL.META_ARCHITECTURE", "GeneralizedRCNN")
    assert type(model) is GeneralizedRCNN
    cfg = _tta_cfg("MODEL.META_ARCHITECTURE", "GeneralizedRCNN")
    inputs = [{"image": _image(), "height": SIZE, "width": SIZE}]
    with torch.no_grad():
        ours = CellRCNNWithTTA(cfg, model)(inputs)[0]["instances"]
        upstream = GeneralizedRCNNWithTTA(cfg, model)(inputs)[0]["instances"]
    _assert_same_instances(ours, upstream)
