"""torchvision Mask R-CNN (v1, v2) -> detectron2: the converted model gives the same detections.

The proof needs no download: a torchvision model with random weights *and random BatchNorm
statistics and affine parameters* (so running stats that differ from 0/1 must survive the trip)
is converted and both models run on the same random image (128x160, torchvision's transform set
to keep that size, so neither side resizes).

Tolerances, and why they are not zero:
- boxes 0.01 px, scores 2e-5, 28x28 mask probabilities 1e-2 (6.2e-3 measured at worst, 1 of
  78,400, with torch 2.14.1 on this CPU): float32 rounding along two different
  but equivalent computations (normalising in [0, 1] vs 0-255 units, different kernel orders).
- detections are matched as sets (class + box), not by rank: near-equal scores may swap places.
- detectron2 keeps boxes that collapse to zero width/height after clipping through NMS and the
  top-100 cut and drops them only in postprocessing; torchvision removes boxes under 0.01 px
  before NMS and fills the freed places with lower-scoring detections. So detectron2 may return
  fewer detections: every one of them must match torchvision's, and any extra torchvision
  detection must score no higher than detectron2's lowest. (Neither trained weights nor this
  test's scaled random heads usually produce such boxes.)
- pasted full-size masks: torchvision pastes at integer box corners, detectron2 at the exact
  float box with bilinear sampling, so borders move by up to about a pixel. A random model's
  28x28 masks are high-frequency noise that such a shift scrambles, so the mask *content* is
  compared at 28x28 and the paste on solid masks of boxes at least 4 px wide and high: IoU
  >= 0.7 each, >= 0.9 on average.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer
from cellseg_d2.config import load_cellseg_config
from cellseg_d2.errors import CellSegError
from cellseg_d2.inference.predictor import CellPredictor
from cellseg_d2.modeling.torchvision_weights import (
    TorchvisionWeightsError,
    convert_torchvision_weights,
)
from tests.conftest import REPO_ROOT, load_tool

HEIGHT, WIDTH = 128, 160
# A random network's features are large, so its raw heads saturate: scores at 0 or 1 (ties that
# make the ranking arbitrary) and box deltas that throw boxes out of the image. Scaling the final
# layers gives distinct scores spread over (0.4, 1) and cell-sized boxes (~30 px).
CLS_SCALE = {"v1": 0.03, "v2": 0.01}
DELTA_SCALE = 0.01


def _random_torchvision_model(variant: str, num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    builder = maskrcnn_resnet50_fpn if variant == "v1" else maskrcnn_resnet50_fpn_v2
    model = builder(
        weights=None, weights_backbone=None, num_classes=num_classes + 1,
        min_size=HEIGHT, max_size=WIDTH,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
        model.roi_heads.box_predictor.cls_score.weight.mul_(CLS_SCALE[variant])
        # a random class bias so that more than one class wins somewhere
        model.roi_heads.box_predictor.cls_score.bias.copy_(
            torch.randn(num_classes + 1, generator=torch.Generator().manual_seed(3)) * 2
        )
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(DELTA_SCALE)
        model.rpn.head.bbox_pred.weight.mul_(DELTA_SCALE)
    return model.eval()


def _detectron2_model(config: Path) -> torch.nn.Module:
    cfg = load_cellseg_config(config, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def _match(
    tv_boxes: torch.Tensor, tv_labels: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor
) -> list[int]:
    """For each detectron2 detection, the index of the torchvision one with its class and box."""
    matches = []
    for box, label in zip(boxes, labels):
        diff = (tv_boxes - box).abs().max(dim=1).values
        diff[tv_labels != label] = float("inf")
        diff[matches] = float("inf")
        best = int(diff.argmin())
        assert diff[best] < 0.01, (box, label, diff[best])
        matches.append(best)
    return matches


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_converted_model_gives_torchvision_detections(variant: str, tmp_path: Path) -> None:
    tv_model = _random_torchvision_model(variant)
    source = tmp_path / "tv.pth"
    torch.save({"model": tv_model.state_dict()}, source)  # a wrapped, fine-tuned-style file
    result = convert_torchvision_weights(source, tmp_path / "d2.pth")
    assert (result.variant, result.num_classes) == (variant, 3)
    cfg_text = yaml.safe_load(result.config.read_text())
    assert cfg_text["INPUT"]["FORMAT"] == "RGB" and "_BASE_" in cfg_text
    d2_model = _detectron2_model(result.config)

    image = torch.randint(0, 256, (3, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(2))
    image = image.float()
    with torch.no_grad():
        tv_out = tv_model([image / 255])[0]
        d2_out = d2_model([{"image": image, "height": HEIGHT, "width": WIDTH}])[0]["instances"]
        # 28x28 mask probabilities before pasting, from both
        images, _ = tv_model.transform([image / 255])
        features = tv_model.backbone(images.tensors)
        proposals, _ = tv_model.rpn(images, features)
        tv_raw = tv_model.roi_heads(features, proposals, images.image_sizes)[0][0]
        d2_raw = d2_model.inference([{"image": image}], do_postprocess=False)[0]

    assert len(d2_out) >= 50 and len(tv_out["boxes"]) == 100
    tv_labels = tv_out["labels"] - 1  # torchvision's class 0 is the background
    matches = _match(tv_out["boxes"], tv_labels, d2_out.pred_boxes.tensor, d2_out.pred_classes)
    torch.testing.assert_close(d2_out.scores, tv_out["scores"][matches], atol=2e-5, rtol=0)
    unmatched = torch.ones(len(tv_labels), dtype=torch.bool)
    unmatched[matches] = False
    assert (tv_out["scores"][unmatched] <= d2_out.scores.min() + 2e-5).all()
    # several classes win, so a wrong class order (background first or last) cannot pass
    assert len(set(d2_out.pred_classes.tolist())) >= 2

    keep = d2_raw.pred_boxes.nonempty()
    raw_matches = _match(
        tv_raw["boxes"],
        tv_raw["labels"] - 1,
        d2_raw.pred_boxes.tensor[keep],
        d2_raw.pred_classes[keep],
    )
    torch.testing.assert_close(
        d2_raw.pred_masks[keep], tv_raw["masks"][raw_matches], atol=1e-2, rtol=0
    )

    # Pasting: with random (high-frequency) 28x28 masks a sub-pixel shift flips many pixels, so
    # the paste is compared on solid masks (logits +4 everywhere): each pasted mask is then its
    # box, placed by each library's own paste.
    with torch.no_grad():
        for predictor in (
            tv_model.roi_heads.mask_predictor.mask_fcn_logits,
            d2_model.roi_heads.mask_head.predictor,
        ):
            predictor.weight.zero_()
            predictor.bias.fill_(4.0)
        tv_solid = tv_model([image / 255])[0]["masks"][matches, 0] > 0.5
        d2_solid = d2_model([{"image": image, "height": HEIGHT, "width": WIDTH}])[0]["instances"]
    sides = d2_solid.pred_boxes.tensor[:, 2:] - d2_solid.pred_boxes.tensor[:, :2]
    sized = (sides >= 4).all(dim=1)  # a sub-pixel-thin box pastes as 0 or 1 px wide, by library
    assert sized.sum() >= 20
    inter = (tv_solid & d2_solid.pred_masks)[sized].sum(dim=(1, 2))
    union = (tv_solid | d2_solid.pred_masks)[sized].sum(dim=(1, 2))
    assert (inter / union).min() >= 0.7 and (inter / union).mean() >= 0.9


def test_predictor_reads_bgr_and_gives_torchvision_scores(tmp_path: Path) -> None:
    """The project's predictor (BGR images in, ``INPUT.FORMAT: RGB`` model) on the converted
    config: each detection is one of torchvision's, with its class and score."""
    tv_model = _random_torchvision_model("v2")
    torch.save(tv_model.state_dict(), tmp_path / "tv.pth")
    result = convert_torchvision_weights(tmp_path / "tv.pth", tmp_path / "d2.pth")
    cfg = load_cellseg_config(
        result.config,
        ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", HEIGHT, "INPUT.MAX_SIZE_TEST", WIDTH],
    )
    predictor = CellPredictor(cfg)
    rgb = torch.randint(0, 256, (HEIGHT, WIDTH, 3), generator=torch.Generator().manual_seed(4))
    rgb = rgb.to(torch.uint8)
    with torch.no_grad():
        tv_out = tv_model([rgb.permute(2, 0, 1).float() / 255])[0]
    detections = predictor([rgb.numpy()[:, :, ::-1].copy()])[0]  # the project reads BGR
    assert len(detections) >= 50
    tv_pairs = list(zip((tv_out["labels"] - 1).tolist(), tv_out["scores"].tolist()))
    for det in detections:
        assert any(c == det.category and abs(s - det.score) < 2e-5 for c, s in tv_pairs), det.score


def test_converted_v2_fine_tunes_with_another_number_of_classes(tmp_path: Path) -> None:
    """The seed's path: torchvision COCO weights (here random, 90 classes) converted, loaded for
    training into a 4-class model (class layers re-initialised), one training step with v2's
    BatchNorm heads in training mode gives finite losses."""
    tv_model = _random_torchvision_model("v2", num_classes=90)
    torch.save(tv_model.state_dict(), tmp_path / "coco.pth")
    result = convert_torchvision_weights(tmp_path / "coco.pth", tmp_path / "d2.pth")
    assert result.num_classes == 90
    cfg = load_cellseg_config(
        result.config, ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", 4]
    )
    model = build_model(cfg)
    checkpointer = AtomicDetectionCheckpointer(model, strict_fit=False)  # a training start
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    converted = torch.load(result.weights, weights_only=True)["model"]
    state = model.state_dict()
    assert torch.equal(
        state["backbone.fpn_lateral2.norm.running_var"],
        converted["backbone.fpn_lateral2.norm.running_var"],
    )
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 5
    masks = torch.zeros((2, HEIGHT, WIDTH), dtype=torch.bool)
    masks[0, 10:40, 20:50] = masks[1, 60:100, 80:120] = True
    instances = Instances((HEIGHT, WIDTH))
    instances.gt_masks = BitMasks(masks)
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances.gt_classes = torch.tensor([0, 3])
    image = torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8)
    model.train()
    with EventStorage():
        losses = model([{"image": image, "instances": instances}] * 2)
    assert all(torch.isfinite(v) for v in losses.values()), losses


def test_old_key_layout_and_bare_state_dict(tmp_path: Path) -> None:
    """torchvision's cache files predate its key renames (``rpn.head.conv.weight``, FPN and mask
    head without the ``.0``); they are upgraded by torchvision's own hooks before conversion."""
    state = _random_torchvision_model("v1").state_dict()
    old = {}
    for key, value in state.items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                key = key.replace(f"fpn.{block}.{i}.0.", f"fpn.{block}.{i}.")
        for i in range(4):
            key = key.replace(f"mask_head.{i}.0.", f"mask_head.mask_fcn{i + 1}.")
        if not key.endswith("num_batches_tracked"):  # FrozenBatchNorm2d checkpoints have none
            old[key] = value
    torch.save(old, tmp_path / "old.pth")
    result = convert_torchvision_weights(tmp_path / "old.pth", tmp_path / "out.pth")
    converted = torch.load(result.weights, weights_only=True)["model"]
    torch.testing.assert_close(
        converted["proposal_generator.rpn_head.conv.weight"], state["rpn.head.conv.0.0.weight"]
    )
    torch.testing.assert_close(
        converted["roi_heads.mask_head.mask_fcn1.weight"], state["roi_heads.mask_head.0.0.weight"]
    )
    torch.testing.assert_close(
        converted["roi_heads.mask_head.predictor.weight"],
        state["roi_heads.mask_predictor.mask_fcn_logits.weight"][1:],
    )


def _write(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("hello")
    state = _random_torchvision_model("v1").state_dict()
    cases = {
        not_torch: "cannot read",
        _write(tmp_path / "resnet.pth", {"conv1.weight": torch.zeros(1)}): "not a torchvision",
        _write(tmp_path / "missing.pth", {k: v for k, v in state.items() if "fc7" not in k}): (
            "missing keys"
        ),
    }
    for path, message in cases.items():
        with pytest.raises(TorchvisionWeightsError, match=message) as info:
            convert_torchvision_weights(path, tmp_path / "out.pth")
        assert str(path) in str(info.value)
        assert isinstance(info.value, CellSegError)  # what every tool maps to exit 2
    assert not (tmp_path / "out.pth").exists()


def test_tool_exits_2_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tool = load_tool(REPO_ROOT / "tools" / "convert_torchvision_weights.py")
    bad = _write(tmp_path / "bad.pth", {"x": torch.zeros(1)})
    code = tool.main(tool.parse_args([str(bad), "--output", str(tmp_path / "o.pth")]))
    assert code == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o.yaml").exists()
