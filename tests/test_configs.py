"""Every shipped YAML loads, builds on CPU and runs; the custom keys do what they say."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer, is_class_layer
from cellseg_d2.config import add_cellseg_config, finish_config, load_cellseg_config
from cellseg_d2.data.register import count_train_images
from cellseg_d2.engine import CellTrainer
from cellseg_d2.modeling import CellRCNN
from tests.conftest import CONFIGS

COCO_WEIGHTS = (
    "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
)
ALL_CONFIGS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))


def _cfg(name: str, *opts: object):
    """A shipped config read with the project's safe loader, on CPU, without weights."""
    return load_cellseg_config(CONFIGS / name, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])


def _small_inputs(cfg_size: int = 128) -> list[dict]:
    """Two images: one with three square cells, one with none."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 255, (3, cfg_size, cfg_size), dtype=np.uint8))
    masks = torch.zeros((3, cfg_size, cfg_size), dtype=torch.bool)
    for i, (y, x) in enumerate([(10, 10), (40, 60), (80, 30)]):
        masks[i, y : y + 16, x : x + 16] = True
    with_cells = Instances((cfg_size, cfg_size))
    with_cells.gt_masks = BitMasks(masks)
    with_cells.gt_boxes = with_cells.gt_masks.get_bounding_boxes()
    with_cells.gt_classes = torch.tensor([0, 1, 3])
    empty = Instances((cfg_size, cfg_size))
    empty.gt_masks = BitMasks(torch.zeros((0, cfg_size, cfg_size), dtype=torch.bool))
    empty.gt_boxes = Boxes(torch.zeros((0, 4)))
    empty.gt_classes = torch.zeros((0,), dtype=torch.int64)
    return [
        {"image": image, "instances": with_cells, "height": cfg_size, "width": cfg_size},
        {"image": image.clone(), "instances": empty, "height": cfg_size, "width": cfg_size},
    ]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds_and_runs(name: str) -> None:
    # Small inputs keep the R-50 configs fast on CPU; the structure is what is under test.
    cfg = _cfg(name, "INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 128)
    model = build_model(cfg)
    assert isinstance(model, CellRCNN)
    inputs = _small_inputs()
    model.train()
    with EventStorage():
        losses = model(inputs)
    assert set(losses) >= {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": inputs[0]["image"], "height": 128, "width": 128}])
    assert len(outputs[0]["instances"]) <= cfg.TEST.DETECTIONS_PER_IMAGE


def test_base_config_cell_settings() -> None:
    cfg = _cfg("Base-CellSeg-RCNN-FPN.yaml")
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[8], [16], [32], [64], [128]]
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [[0.5, 1.0, 2.0]]
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 4
    assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.3
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 200
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.DATASETS.TRAIN == ("cells_train",) and cfg.DATASETS.TEST == ("cells_val",)


def test_cpu_recipe_keeps_cells_at_their_size_and_fits_a_budget() -> None:
    """What the README's CPU recipe row claims: native scale (the demo shrinks 1000 px tiles to
    ~300 px), crops, no stain jitter (measured: no gain), dense detections, a 30-minute
    wall-clock schedule."""
    cpu, demo = _cfg("cpu_cells.yaml"), _cfg("demo_cells.yaml")
    assert cpu.INPUT.SCALE == 1.0 and demo.INPUT.SCALE == 0.0
    assert cpu.INPUT.CROP.ENABLED and tuple(cpu.INPUT.CROP.SIZE) == (384, 384)
    assert not cpu.INPUT.STAIN.ENABLED and not cpu.INPUT.COLOR.ENABLED
    assert not demo.INPUT.STAIN.ENABLED
    assert cpu.TEST.DETECTIONS_PER_IMAGE >= 1000 and cpu.MODEL.RPN.POST_NMS_TOPK_TEST >= 1000
    assert cpu.SOLVER.TIME_BUDGET_MINUTES == 30.0
    assert cpu.MODEL.RESNETS.DEPTH == demo.MODEL.RESNETS.DEPTH == 18
    assert cpu.SOLVER.IMS_PER_BATCH == 2  # the sweep's choice: more iterations per minute


def test_real_configs_start_from_imagenet_and_demo_from_scratch() -> None:
    for name in ALL_CONFIGS:
        cfg = load_cellseg_config(CONFIGS / name)
        if "scratch" in name:
            assert cfg.MODEL.WEIGHTS == "", name
        elif "_coco" in name:  # detectron2's COCO model, trained from the same MSRA weights
            assert cfg.MODEL.WEIGHTS == COCO_WEIGHTS, name
            assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0] and cfg.INPUT.FORMAT == "BGR"
        elif "R_50" in name:
            assert cfg.MODEL.WEIGHTS.endswith("ImageNetPretrained/MSRA/R-50.pkl"), name
            assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]  # MSRA caffe2 weights
        elif name != "Base-CellSeg-RCNN-FPN.yaml":
            assert cfg.MODEL.WEIGHTS == "", name


def test_scratch_config_normalises_and_trains_every_layer() -> None:
    cfg = _cfg("mask_rcnn_R_50_FPN_scratch_cells.yaml")
    model = build_model(cfg)
    frozen_bn = [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen_bn == []
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.bottom_up.modules()) > 50
    assert all(p.requires_grad for p in model.backbone.parameters())  # FREEZE_AT 0
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.FPN.NORM == "GN"
    assert cfg.MODEL.ROI_BOX_HEAD.NORM == "GN" and cfg.MODEL.ROI_MASK_HEAD.NORM == "GN"


def test_import_cellseg_d2_registers_the_meta_architecture() -> None:
    # A fresh interpreter: this test session has long imported cellseg_d2.modeling.
    code = (
        "import cellseg_d2\n"
        "from detectron2.modeling import build_model\n"
        "from cellseg_d2.config import load_cellseg_config\n"
        f"cfg = load_cellseg_config({str(CONFIGS / 'quick_schedules' / 'instant_test.yaml')!r})\n"
        "cfg.MODEL.DEVICE = 'cpu'\n"
        "print(type(build_model(cfg)).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("CellRCNN")


def test_seed_configs_follow_the_report() -> None:
    for name in ("seed/mask_rcnn_R_50_FPN_seed.yaml", "seed/mask_rcnn_R_50_FPN_v2_seed.yaml"):
        cfg = _cfg(name)
        assert cfg.SOLVER.OPTIMIZER == "ADAMW"
        assert cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.WEIGHT_DECAY == 1e-4
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR"
        assert cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 10.0
        assert cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.SOLVER.EPOCHS == 50
        assert (cfg.INPUT.ELASTIC.ALPHA, cfg.INPUT.ELASTIC.SIGMA) == (30.0, 12.0)
        assert cfg.INPUT.ELASTIC.PROB == 0.3
        assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.99
        assert cfg.MODEL.CELLSEG.MASK_THRESHOLD == 0.6


def test_v2_differs_in_structure() -> None:
    v1 = build_model(_cfg("mask_rcnn_R_50_FPN_cells.yaml"))
    v2 = build_model(_cfg("mask_rcnn_R_50_FPN_v2_cells.yaml"))

    def count(model: torch.nn.Module, kind: type) -> int:
        return sum(isinstance(m, kind) for m in model.modules())

    assert count(v1, torch.nn.GroupNorm) == 0
    assert count(v2.backbone, torch.nn.GroupNorm) > 0  # FPN
    assert count(v2.roi_heads.box_head, torch.nn.GroupNorm) == 4
    assert count(v2.roi_heads.mask_head, torch.nn.GroupNorm) == 4
    assert len(v1.roi_heads.box_head.conv_norm_relus) == 0
    assert len(v2.roi_heads.box_head.conv_norm_relus) == 4
    assert len(v2.roi_heads.box_head.fcs) == 1 and len(v1.roi_heads.box_head.fcs) == 2
    assert len(v2.proposal_generator.rpn_head.conv) == 2  # two-conv RPN head


def test_dense_config_budget_reaches_the_evaluator(tmp_path: Path, cells_prefix: str) -> None:
    cfg = _cfg("mask_rcnn_R_50_FPN_dense_cells.yaml", "OUTPUT_DIR", str(tmp_path))
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 1000
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST >= 1000
    evaluator = CellTrainer.build_evaluator(cfg, f"{cells_prefix}_val")
    assert evaluator._max_dets_per_image == [1, 10, 1000]


def test_dense_gpu_config_scales_batch_lr_and_budget(tmp_path: Path, cells_prefix: str) -> None:
    base = _cfg("mask_rcnn_R_50_FPN_coco_cells.yaml")
    cfg = _cfg("mask_rcnn_R_50_FPN_coco_dense_gpu_cells.yaml", "OUTPUT_DIR", str(tmp_path))
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.AMP.ENABLED
    scale = cfg.SOLVER.IMS_PER_BATCH / base.SOLVER.IMS_PER_BATCH
    assert cfg.SOLVER.BASE_LR == pytest.approx(base.SOLVER.BASE_LR * scale)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 1000 and cfg.MODEL.RPN.POST_NMS_TOPK_TEST >= 1000
    evaluator = CellTrainer.build_evaluator(cfg, f"{cells_prefix}_val")
    assert evaluator._max_dets_per_image == [1, 10, 1000]


def test_coco_checkpoint_class_layers_are_reinitialised(tmp_path: Path) -> None:
    """A zoo-style checkpoint (80 COCO classes) loads into the 4-class model: the class layers
    keep their fresh initialisation, everything else is loaded, and one line says so."""
    coco = build_model(
        _cfg("mask_rcnn_R_50_FPN_coco_cells.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 80)
    )
    with torch.no_grad():
        for param in coco.parameters():  # distinguishable from any fresh initialisation
            param.add_(1.0)
    weights = tmp_path / "model_final.pth"
    torch.save({"model": coco.state_dict(), "__author__": "test"}, weights)
    model = build_model(_cfg("mask_rcnn_R_50_FPN_coco_cells.yaml"))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = AtomicDetectionCheckpointer(model, save_dir=str(tmp_path), strict_fit=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    level = checkpointer.logger.level
    checkpointer.logger.addHandler(handler)
    checkpointer.logger.setLevel(logging.INFO)
    try:
        checkpointer.resume_or_load(str(weights), resume=False)
    finally:
        checkpointer.logger.removeHandler(handler)
        checkpointer.logger.setLevel(level)

    loaded, source = model.state_dict(), coco.state_dict()
    class_keys = [k for k in loaded if is_class_layer(k)]
    assert len(class_keys) == 6  # weight and bias of cls_score, bbox_pred, mask predictor
    for key in class_keys:
        assert torch.equal(loaded[key], fresh[key]), key
    for key in loaded.keys() - set(class_keys):
        assert torch.equal(loaded[key], source[key]), key
    reinit = [r.getMessage() for r in records if "Re-initialised" in r.getMessage()]
    assert len(reinit) == 1
    for layer in ("cls_score", "bbox_pred", "mask_head.predictor", "NUM_CLASSES=4"):
        assert layer in reinit[0]
    assert not [r for r in records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in records if r.levelno >= logging.WARNING
    ]


def test_mask_threshold_changes_binarised_masks() -> None:
    cfg = _cfg("quick_schedules/instant_test.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    inputs = [{"image": _small_inputs()[0]["image"], "height": 128, "width": 128}]
    areas = []
    for threshold in (0.3, 0.5, 0.7):
        model.mask_threshold = threshold
        with torch.no_grad():
            instances = model(inputs)[0]["instances"]
        assert len(instances) > 0
        areas.append(int(instances.pred_masks.sum()))
    assert areas[0] > areas[1] > areas[2]


def test_mask_threshold_key_reaches_the_model() -> None:
    model = build_model(_cfg("seed/mask_rcnn_R_50_FPN_seed.yaml"))
    assert model.mask_threshold == 0.6
    with pytest.raises(ValueError, match="MASK_THRESHOLD"):
        build_model(_cfg("quick_schedules/instant_test.yaml", "MODEL.CELLSEG.MASK_THRESHOLD", 1.5))


def test_add_cellseg_config_is_idempotent() -> None:
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_cellseg_config(cfg)
    add_cellseg_config(cfg)
    assert cfg.MODEL.CELLSEG.MASK_THRESHOLD == 0.5
    assert cfg.SOLVER.EPOCHS == 0 and cfg.SOLVER.OPTIMIZER == "SGD"


def _trained_two_iterations(name: str, prefix: str, output: Path) -> CellTrainer:
    """A shipped config trained for 2 iterations on the synthetic data, on CPU, as
    ``train_net.py`` would run it (finished config, CellTrainer)."""
    loaded = _cfg(
        name,
        "DATASETS.TRAIN", (f"{prefix}_train",), "DATASETS.TEST", (),
        "OUTPUT_DIR", str(output), "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2,
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.BEST_CHECKPOINT.METRIC", "",
    )  # fmt: skip
    trainer = CellTrainer(finish_config(loaded, train_images=count_train_images))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def test_pointrend_trains_two_iterations_and_predicts_image_size_masks(
    cells_prefix: str, tmp_path: Path
) -> None:
    trainer = _trained_two_iterations("demo_pointrend_cells.yaml", cells_prefix, tmp_path)
    assert type(trainer.model.roi_heads.mask_head).__name__ == "PointRendMaskHead"
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 1 and "loss_mask_point" in metrics[-1]
    model = trainer.model.eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # an untrained model: keep everything
    image = _small_inputs()[0]["image"]
    with torch.no_grad():
        instances = model([{"image": image, "height": 100, "width": 150}])[0]["instances"]
    assert len(instances) > 0
    assert instances.pred_masks.shape == (len(instances), 100, 150)
    assert instances.pred_masks.dtype == torch.bool


def test_mask56_head_predicts_56_by_56_masks(cells_prefix: str, tmp_path: Path) -> None:
    trainer = _trained_two_iterations("demo_mask56_cells.yaml", cells_prefix, tmp_path)
    shapes = []
    predictor = trainer.model.roi_heads.mask_head.predictor
    handle = predictor.register_forward_hook(lambda module, args, out: shapes.append(out.shape))
    model = trainer.model.eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        model([{"image": _small_inputs()[0]["image"], "height": 128, "width": 128}])
    handle.remove()
    assert shapes and tuple(shapes[0][-2:]) == (56, 56)
    default = build_model(_cfg("demo_cells.yaml"))
    assert default.roi_heads.mask_pooler.output_size == (14, 14)  # 28 x 28 masks
