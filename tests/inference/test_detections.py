"""cellseg_d2.inference.detections: the mask paste, tight crops, tiling and the tile merge that
the eager and the exported predictor share (checked against detectron2 where it has one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torchvision.ops import box_iou

from cellseg_d2.data import decode_rle, label_image_to_instances
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.inference import detections as detections_module
from cellseg_d2.inference.detections import (
    TILE_MERGE_IOU,
    Detection,
    merge_tile_detections,
    predict_in_tiles,
    raw_outputs_to_detections,
    tile_windows,
    trim_detection,
)


def _random_raw(rng: np.random.Generator, n: int, size: tuple[int, int]) -> dict:
    height, width = size
    xy = rng.uniform(-5, [width, height], size=(n, 2))
    wh = rng.uniform(0.2, 40, size=(n, 2))
    return {
        "boxes": torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32),
        "classes": torch.tensor(rng.integers(0, 4, n)),
        "scores": torch.tensor(rng.random(n), dtype=torch.float32),
        "masks": torch.tensor(rng.random((n, 1, 28, 28)), dtype=torch.float32),
    }


def test_raw_outputs_to_detections_equal_detectron2_postprocess() -> None:
    """Boxes partly outside the input, some too thin to keep a pixel, a resize on the way back."""
    rng = np.random.default_rng(0)
    raw = _random_raw(rng, 70, (90, 120))
    got = raw_outputs_to_detections(
        raw["boxes"], raw["classes"], raw["scores"], raw["masks"], (90, 120), 181, 243, 0.6
    )
    instances = Instances((90, 120))
    instances.pred_boxes = Boxes(raw["boxes"])
    instances.pred_classes, instances.scores = raw["classes"], raw["scores"]
    instances.pred_masks = raw["masks"]
    reference = detector_postprocess(instances, 181, 243, mask_threshold=0.6)
    keep = [i for i, mask in enumerate(reference.pred_masks) if mask.any()]
    assert len(got) == len(keep) > 30
    for det, i in zip(got, keep):
        assert det.category == int(reference.pred_classes[i])
        assert det.score == float(reference.scores[i])
        pasted = np.zeros((181, 243), bool)
        pasted[det.top : det.top + det.mask.shape[0], det.left : det.left + det.mask.shape[1]] = (
            det.mask
        )
        assert np.array_equal(pasted, reference.pred_masks[i].numpy())


def test_trim_detection_keeps_the_tight_crop() -> None:
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:7] = True
    det = trim_detection(1, 0.5, 10, 20, mask)
    assert det is not None and (det.top, det.left, det.mask.shape) == (12, 23, (2, 4))
    assert det.box == (23, 12, 27, 14)
    assert trim_detection(1, 0.5, 10, 20, np.zeros((6, 8), bool)) is None


def test_tile_windows_cover_with_overlap() -> None:
    windows = tile_windows(100, 700, tile=256, overlap=64)
    covered = np.zeros((100, 700), int)
    for top, left, bottom, right in windows:
        covered[top:bottom, left:right] += 1
        assert right - left == 256 and bottom - top == 100
    assert covered.min() >= 1
    lefts = sorted({w[1] for w in windows})
    assert all(b - a <= 256 - 64 for a, b in zip(lefts, lefts[1:]))
    with pytest.raises(ValueError, match="OVERLAP"):
        tile_windows(100, 700, tile=64, overlap=64)


def _oracle_detections(labels: dict[int, np.ndarray], window) -> list[Detection]:
    """What a perfect model sees in a tile: every ground-truth cell, cut by the tile edges."""
    top, left, bottom, right = window
    detections = []
    for cls, label in labels.items():
        for inst in label_image_to_instances(label[top:bottom, left:right].astype(np.int64)):
            x, y, w, h = inst.bbox
            crop = decode_rle(inst.rle)[y : y + h, x : x + w]
            detections.append(Detection(cls - 1, 0.9, y, x, crop))
    return detections


def test_tiled_result_matches_untiled_on_three_tiles() -> None:
    rng = np.random.default_rng(3)
    _, labels = synthesize_image(rng, 160, 384)
    height, width = 160, 384
    whole = _oracle_detections(labels, (0, 0, height, width))
    windows = tile_windows(height, width, tile=160, overlap=48)
    assert len({w[1] for w in windows}) == 3
    tiled = merge_tile_detections(
        [(w, _oracle_detections(labels, w)) for w in windows], height, width
    )

    def keyed(dets):  # a tight crop and its place say the same as the image-sized mask
        return sorted((d.category, d.top, d.left, d.mask.shape, d.mask.tobytes()) for d in dets)

    assert len(tiled) == len(whole)
    assert keyed(tiled) == keyed(whole)


def test_tile_merge_keeps_overlaps_within_a_tile() -> None:
    mask = np.ones((10, 10), bool)
    # a and b overlap (IoU 0.68) inside tile 0, both in the overlap with tile 1 (x 50..64)
    a, b = Detection(0, 0.9, 20, 52, mask), Detection(1, 0.8, 21, 51, mask)
    copy = Detection(0, 0.95, 20, 2, mask)  # `a` again, seen whole by tile 1, scoring higher
    windows = [(0, 0, 60, 64), (0, 50, 60, 114)]
    merged = merge_tile_detections([(windows[0], [a, b]), (windows[1], [copy])], 60, 114)
    assert sorted(d.score for d in merged) == [0.8, 0.95]  # b kept, a merged into its copy
    assert {(d.top, d.left) for d in merged} == {(20, 52), (21, 51)}


def test_predict_in_tiles_batches_windows_and_merges() -> None:
    image = np.zeros((100, 250, 3), np.uint8)
    calls = []

    def predict(crops: list[np.ndarray]) -> list[list[Detection]]:
        calls.append([crop.shape[:2] for crop in crops])
        # one whole cell in the middle of every tile
        return [[Detection(0, 0.5, 40, 40, np.ones((8, 8), bool))] for _ in crops]

    merged = predict_in_tiles(image, 128, 32, 2, predict)
    windows = tile_windows(100, 250, 128, 32)
    assert [len(c) for c in calls] == [2, 1] and len(windows) == 3
    assert [shape for c in calls for shape in c] == [(b - t, r - lf) for t, lf, b, r in windows]
    assert sorted(d.left for d in merged) == sorted(w[1] + 40 for w in windows)


def _dense_merge_reference(kept: list[Detection], tile_of: list[int]) -> list[Detection]:
    """The merge as it was before it compared only neighbouring tiles: one dense IoU matrix."""
    boxes = torch.tensor([d.box for d in kept], dtype=torch.float32)
    iou = box_iou(boxes, boxes)
    tile_ids = torch.tensor(tile_of)
    iou[tile_ids[:, None] == tile_ids[None, :]] = 0.0
    removed = torch.zeros(len(kept), dtype=torch.bool)
    result = []
    for i in sorted(range(len(kept)), key=lambda k: -kept[k].score):
        if removed[i]:
            continue
        result.append(kept[i])
        removed[i] = True
        candidates = iou[i].masked_fill(removed, 0.0)
        for tile in torch.unique(tile_ids[candidates > TILE_MERGE_IOU]).tolist():
            removed[int(torch.argmax(candidates.masked_fill(tile_ids != tile, 0.0)))] = True
    return result


def test_tile_merge_compares_only_neighbouring_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    height = width = 700
    windows = tile_windows(height, width, tile=300, overlap=60)
    assert len(windows) == 9  # 3 x 3
    rng = np.random.default_rng(5)
    cells = []  # (top, left, side) in image pixels, some in seams, most inside one tile
    for _ in range(400):
        side = int(rng.integers(4, 20))
        cells.append(
            (int(rng.integers(0, height - side)), int(rng.integers(0, width - side)), side)
        )
    tiles, kept, tile_of = [], [], []
    for index, (top, left, bottom, right) in enumerate(windows):
        dets = []
        for y, x, side in cells:
            # a whole cell, a little shifted (a model sees it slightly differently per tile)
            y2, x2 = y + int(rng.integers(0, 2)), x + int(rng.integers(0, 2))
            if (
                top + 2 <= y2
                and y2 + side <= bottom - 2
                and left + 2 <= x2
                and x2 + side <= right - 2
            ):
                mask = np.ones((side, side), bool)
                score = float(rng.random())
                dets.append(Detection(int(rng.integers(0, 4)), score, y2 - top, x2 - left, mask))
                kept.append(Detection(dets[-1].category, score, y2, x2, mask))
                tile_of.append(index)
        tiles.append(((top, left, bottom, right), dets))
    compared = []
    real_box_iou = detections_module.box_iou

    def counting_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        compared.append((a.clone(), b.clone()))
        return real_box_iou(a, b)

    monkeypatch.setattr(detections_module, "box_iou", counting_box_iou)
    merged = merge_tile_detections(tiles, height, width)
    expected = _dense_merge_reference(kept, tile_of)
    key = [(d.top, d.left, d.score) for d in expected]
    assert [(d.top, d.left, d.score) for d in merged] == key
    assert len(kept) - len(merged) > 50  # seam cells seen by 2-4 tiles were merged
    assert len(merged) >= len(cells) - 5  # ... without merging distinct cells (rare exact twins)
    # Every compared box reaches into an overlap zone of two windows (interior cells are never
    # compared) and the comparisons are a small fraction of the dense matrix.
    seams = np.zeros((height, width), int)
    for top, left, bottom, right in windows:
        seams[top:bottom, left:right] += 1
    for a, b in compared:
        for x0, y0, x1, y1 in torch.cat([a, b]).int().tolist():
            assert seams[y0:y1, x0:x1].max() >= 2
    pairs = sum(len(a) * len(b) for a, b in compared)
    assert 0 < pairs < len(kept) ** 2 / 20


def test_greedy_tile_survivors_keeps_the_best_copy_once_per_other_tile() -> None:
    from cellseg_d2.inference.detections import greedy_tile_survivors

    # 0 (tile 0) matches 1 and 2 (both tile 1): only its best match, 2, is removed by 0; then
    # 1 survives (its match 0 is already kept); 3 (tile 2) matches nothing.
    scores = [0.9, 0.5, 0.4, 0.95]
    tile_of = [0, 1, 1, 2]
    matches = {0: [(0.6, 1), (0.8, 2)], 1: [(0.6, 0)], 2: [(0.8, 0)]}
    assert greedy_tile_survivors(scores, tile_of, matches) == [3, 0, 1]
    assert greedy_tile_survivors([0.5, 0.5], [0, 1], {0: [(0.9, 1)], 1: [(0.9, 0)]}) == [0]
