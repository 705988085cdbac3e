"""cellseg_d2.inference.predictor: the detectron2 predictor (batches, tiling, the detection cap)
and the Instances -> crop detections -> COCO results steps around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from cellseg_d2.data import decode_rle
from cellseg_d2.errors import ConfigError
from cellseg_d2.inference.predictor import (
    CellPredictor,
    detections_to_results,
    postprocessed_instances_to_detections,
    raw_instances_to_detections,
)
from tests.conftest import instant_cfg


def _random_raw_instances(n: int, in_size: tuple[int, int], seed: int = 0) -> Instances:
    gen = torch.Generator().manual_seed(seed)
    h, w = in_size
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - 20, h - 20])
    wh = 4 + torch.rand(n, 2, generator=gen) * 30
    instances = Instances(in_size)
    instances.pred_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    instances.scores = torch.rand(n, generator=gen)
    instances.pred_classes = torch.randint(0, 4, (n,), generator=gen)
    instances.pred_masks = torch.rand(n, 1, 28, 28, generator=gen)
    return instances


@pytest.mark.parametrize("threshold", [0.5, 0.6])
def test_crop_paste_equals_detectron2_postprocess(threshold: float) -> None:
    raw = _random_raw_instances(40, (120, 160))
    out_h, out_w = 150, 200  # a resized input mapped back to its original size
    ours = raw_instances_to_detections(raw, out_h, out_w, threshold)
    reference = detector_postprocess(raw, out_h, out_w, mask_threshold=threshold)
    full = [m.numpy() for m in reference.pred_masks if m.any()]
    assert len(ours) == len(full)
    for det, mask in zip(ours, full):
        pasted = np.zeros((out_h, out_w), bool)
        y, x = det.top, det.left
        pasted[y : y + det.mask.shape[0], x : x + det.mask.shape[1]] = det.mask
        assert np.array_equal(pasted, mask)
        rle = detections_to_results([det], 1, out_h, out_w)[0]["segmentation"]
        assert np.array_equal(decode_rle(rle), mask)


def test_postprocessed_instances_become_tight_crops() -> None:
    instances = Instances((20, 30))
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 5:9, 10:20] = True  # the second mask is empty: no cell
    instances.pred_masks = masks
    instances.scores = torch.tensor([0.9, 0.8])
    instances.pred_classes = torch.tensor([2, 1])
    (det,) = postprocessed_instances_to_detections(instances)
    assert (det.category, det.top, det.left, det.mask.shape) == (2, 5, 10, (4, 10))
    assert det.score == pytest.approx(0.9)


def test_predictor_tiles_large_images_and_batches(cells_prefix: str, tmp_path: Path) -> None:
    cfg = instant_cfg(cells_prefix, tmp_path, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    cfg.merge_from_list(["TEST.TILING.MAX_SIZE", 200, "TEST.TILING.TILE_SIZE", 128])
    cfg.merge_from_list(["TEST.TILING.OVERLAP", 32, "TEST.IMS_PER_BATCH", 2])
    predictor = CellPredictor(cfg)
    tiled_shapes = []
    untiled = predictor.predict_tiled

    def spy(image, predict):
        tiled_shapes.append(image.shape[:2])
        return untiled(image, predict)

    predictor.predict_tiled = spy
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(96, 120), (150, 330)]]
    outputs = predictor(images)
    assert tiled_shapes == [(150, 330)]  # only the image above TEST.TILING.MAX_SIZE
    assert len(outputs) == 2
    for image, detections in zip(images, outputs):
        assert detections, "a random model at score 0 still detects something"
        for det in detections:
            x0, y0, x1, y1 = det.box
            assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
            assert det.mask.any(axis=0)[[0, -1]].all() and det.mask.any(axis=1)[[0, -1]].all()


def test_detection_cap_is_counted_and_warned_once(
    cells_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = instant_cfg(cells_prefix, tmp_path, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    cfg.merge_from_list(["TEST.DETECTIONS_PER_IMAGE", 3, "TEST.TILING.MAX_SIZE", 200])
    cfg.merge_from_list(["TEST.TILING.TILE_SIZE", 128, "TEST.TILING.OVERLAP", 32])
    predictor = CellPredictor(cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(96, 120), (150, 330)]]
    outputs = predictor(images)
    caplog.clear()
    assert predictor.images_at_detection_cap == 2  # the tiled image counts once
    assert len(outputs[0]) <= 3
    # Documented: a tiled image is capped per tile, its merged result is not cut again.
    assert len(outputs[1]) > 3
    with caplog.at_level("WARNING", logger="cellseg_d2.inference.predictor"):
        predictor.warn_detection_cap(len(images))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "2 of 2 image(s)" in warnings[0] and "TEST.DETECTIONS_PER_IMAGE=3" in warnings[0]

    roomy = CellPredictor(instant_cfg(cells_prefix, tmp_path, "TEST.DETECTIONS_PER_IMAGE", 10**6))
    roomy(images[:1])
    caplog.clear()
    assert roomy.detection_cap == 10**6
    with caplog.at_level("WARNING", logger="cellseg_d2.inference.predictor"):
        roomy.warn_detection_cap(1)
    assert roomy.images_at_detection_cap == 0
    assert not [r for r in caplog.records if "detection cap" in r.getMessage()]


def test_model_input_is_the_evaluation_resize_in_the_model_format(tmp_path: Path) -> None:
    sizes = ("INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 100)
    bgr = CellPredictor(instant_cfg("unused", tmp_path, *sizes))
    image = np.random.default_rng(1).integers(0, 255, (48, 60, 3), dtype=np.uint8)
    item = bgr.model_input(image)
    assert (item["height"], item["width"]) == (48, 60)  # the size detections are mapped to
    resized = T.ResizeShortestEdge([64, 64], 100).get_transform(image).apply_image(image)
    assert torch.equal(item["image"], torch.as_tensor(resized.transpose(2, 0, 1).copy()))
    assert tuple(item["image"].shape) == (3, 64, 80)
    rgb = CellPredictor(instant_cfg("unused", tmp_path, *sizes, "INPUT.FORMAT", "RGB"))
    assert torch.equal(rgb.model_input(image)["image"], item["image"].flip(0))


def test_scale_resizes_inputs_and_maps_detections_back(tmp_path: Path) -> None:
    """INPUT.SCALE 2: a 48x60 image enters the model at 96x120 whatever MIN_SIZE_TEST says,
    and the detections come back in the 48x60 image's pixels."""
    cfg = instant_cfg("unused", tmp_path, "INPUT.SCALE", 2.0, "INPUT.MIN_SIZE_TEST", 64)
    cfg.merge_from_list(["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
    predictor = CellPredictor(cfg)
    image = np.random.default_rng(2).integers(0, 255, (48, 60, 3), dtype=np.uint8)
    item = predictor.model_input(image)
    assert tuple(item["image"].shape) == (3, 96, 120)
    assert (item["height"], item["width"]) == (48, 60)
    (detections,) = predictor([image])
    assert detections, "a random model at score 0 still detects something"
    for det in detections:
        x0, y0, x1, y1 = det.box
        assert 0 <= x0 < x1 <= 60 and 0 <= y0 < y1 <= 48
        assert det.top + det.mask.shape[0] <= 48 and det.left + det.mask.shape[1] <= 60
    with predictor.inputs_at_model_scale():  # slide tiles: read at the model's pixel size
        assert tuple(predictor.model_input(image)["image"].shape) == (3, 48, 60)
    assert tuple(predictor.model_input(image)["image"].shape) == (3, 96, 120)


def test_slide_tiles_are_never_resized_by_their_own_size(tmp_path: Path) -> None:
    """Without INPUT.SCALE the short-edge resize would enlarge a narrow edge tile to
    MIN_SIZE_TEST; slide tiles get one fixed factor instead."""
    predictor = CellPredictor(instant_cfg("unused", tmp_path, "INPUT.MIN_SIZE_TEST", 128))
    narrow = np.zeros((40, 100, 3), np.uint8)
    assert tuple(predictor.model_input(narrow)["image"].shape) == (
        3,
        102,
        256,
    )  # short side to 128, long side capped at 256
    with predictor.inputs_at_model_scale():
        assert tuple(predictor.model_input(narrow)["image"].shape) == (3, 40, 100)
    with predictor.inputs_at_model_scale(2.0):
        assert tuple(predictor.model_input(narrow)["image"].shape) == (3, 80, 200)
    assert tuple(predictor.model_input(narrow)["image"].shape) == (
        3,
        102,
        256,
    )  # short side to 128, long side capped at 256


def test_scale_refuses_tta_and_an_uncomputed_scale(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TEST.AUG"):
        CellPredictor(instant_cfg("unused", tmp_path, "INPUT.SCALE", 2.0), tta=True)
    with pytest.raises(ConfigError, match="never computed"):
        CellPredictor(instant_cfg("unused", tmp_path, "INPUT.CELL_DIAMETER", 30.0))
