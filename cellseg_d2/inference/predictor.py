"""Inference on whole cell images: batching, test-time augmentation and tiling.

Speed is won around the model, so predictions never become full-size masks: each detection's
28x28 mask is pasted only into its own box (the values detectron2's paste computes, for many
boxes per call), thresholded there, trimmed to its tight extent and kept as a small crop.
Submission RLEs are encoded from those crops (:func:`cellseg_d2.data.rle.encode_crops`), which
costs the cell's area instead of the image's.

Images larger than ``TEST.TILING.MAX_SIZE`` run as overlapping tiles: a detection touching a tile
edge inside the image is a cell cut by the tile and is dropped (the neighbouring tile, overlapping
by more than a cell, holds it whole); cells whole in two tiles are merged by NMS.

The model returns at most ``TEST.DETECTIONS_PER_IMAGE`` detections per input, and a dense image
that reaches that cap silently loses cells. :class:`CellPredictor` counts the images that hit
it and :meth:`CellPredictor.warn_detection_cap` logs the count once per run. NOTE: the cap
applies per model input, so a tiled image is capped per tile and its merged result is NOT cut
to the cap again (cutting by score after merging would drop cells of whole regions); a tiled
image counts as hitting the cap when one of its tiles does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torchvision.ops import box_iou

from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer
from cellseg_d2.data.rle import InstanceCrop, encode_crops, tight_crop
from cellseg_d2.modeling import CellRCNNWithTTA

__all__ = [
    "CellPredictor",
    "Detection",
    "detections_to_results",
    "merge_tile_detections",
    "paste_masks_in_boxes",
    "postprocessed_instances_to_detections",
    "raw_instances_to_detections",
    "tile_windows",
]

logger = logging.getLogger(__name__)

#: IoU above which two whole detections from different tiles are the same cell.
TILE_MERGE_IOU = 0.5


@dataclass
class Detection:
    """One predicted cell in original image pixels.

    Attributes:
        category: 0-based contiguous class index (class1 -> 0).
        score: detection confidence in [0, 1].
        top, left: position of ``mask``'s first pixel in the image.
        mask: bool crop, tight around the cell's pixels.
    """

    category: int
    score: float
    top: int
    left: int
    mask: np.ndarray

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Tight ``(x0, y0, x1, y1)`` box of the mask, exclusive end."""
        return self.left, self.top, self.left + self.mask.shape[1], self.top + self.mask.shape[0]


def _detection(
    category: int, score: float, top: int, left: int, mask: np.ndarray
) -> Detection | None:
    """A :class:`Detection` trimmed to its mask's tight box; None for an empty mask."""
    crop = tight_crop(top, left, mask)
    return None if crop is None else Detection(category, score, *crop)


#: Masks pasted together in one ``grid_sample`` call (sorted by size, so padding stays small).
PASTE_CHUNK = 32


def paste_masks_in_boxes(
    masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float
) -> list[tuple[int, int, np.ndarray]]:
    """Paste N mask probability maps into their boxes and binarise, without full-size masks.

    Computes exactly what detectron2's ``paste_masks_in_image`` computes on CPU (the same grid,
    ``grid_sample`` and region: the box rounded out by one pixel, clipped to the image), but for
    a chunk of similar-sized boxes in one call instead of one call per box, and returns each
    mask as a crop.

    Args:
        masks: N x M x M probabilities.
        boxes: N x 4 XYXY boxes in output pixels, already clipped to the image.
        height, width: output image size.
        threshold: foreground where probability >= threshold.

    Returns:
        ``(top, left, bool crop)`` per box, in the input order.
    """
    x0i = (boxes[:, 0].floor() - 1).clamp(min=0).to(torch.int64)
    y0i = (boxes[:, 1].floor() - 1).clamp(min=0).to(torch.int64)
    x1i = (boxes[:, 2].ceil() + 1).clamp(max=width).to(torch.int64)
    y1i = (boxes[:, 3].ceil() + 1).clamp(max=height).to(torch.int64)
    region_w, region_h = x1i - x0i, y1i - y0i
    order = torch.argsort(region_w * region_h)
    pasted: list[tuple[int, int, np.ndarray] | None] = [None] * len(boxes)
    for start in range(0, len(order), PASTE_CHUNK):
        idx = order[start : start + PASTE_CHUNK]
        rw, rh = region_w[idx], region_h[idx]
        cols = torch.arange(int(rw.max()), dtype=torch.float32)
        rows = torch.arange(int(rh.max()), dtype=torch.float32)
        x0, y0, x1, y1 = boxes[idx].unbind(dim=1)
        box_w, box_h = (x1 - x0)[:, None], (y1 - y0)[:, None]
        img_x = (x0i[idx, None].to(torch.float32) + cols + 0.5 - x0[:, None]) / box_w * 2 - 1
        img_y = (y0i[idx, None].to(torch.float32) + rows + 0.5 - y0[:, None]) / box_h * 2 - 1
        grid = torch.stack(
            [
                img_x[:, None, :].expand(-1, len(rows), -1),
                img_y[:, :, None].expand(-1, -1, len(cols)),
            ],
            dim=3,
        )
        probabilities = torch.nn.functional.grid_sample(
            masks[idx, None].to(torch.float32), grid, align_corners=False
        )[:, 0]
        binary = (probabilities >= threshold).numpy()
        for row, index in enumerate(idx.tolist()):
            h, w = int(rh[row]), int(rw[row])
            pasted[index] = (int(y0i[index]), int(x0i[index]), binary[row, :h, :w])
    return pasted  # type: ignore[return-value]


def raw_instances_to_detections(
    instances: Instances, height: int, width: int, mask_threshold: float
) -> list[Detection]:
    """Turn the model's unprocessed output (network input scale, 28x28 mask probabilities) into
    detections at ``height`` x ``width``.

    Boxes are scaled and clipped as ``detector_postprocess`` does; masks are pasted as
    detectron2 pastes them (:func:`paste_masks_in_boxes`) and cut at ``mask_threshold``.
    Degenerate boxes and masks with no pixel left are dropped.
    """
    in_h, in_w = instances.image_size
    boxes = instances.pred_boxes.tensor.detach().to("cpu", torch.float32).clone()
    boxes[:, 0::2] *= width / in_w
    boxes[:, 1::2] *= height / in_h
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    valid = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).nonzero()[:, 0]
    if len(valid) == 0:
        return []
    scores = instances.scores.detach().cpu()[valid].tolist()
    classes = instances.pred_classes.detach().cpu()[valid].tolist()
    masks = instances.pred_masks.detach().cpu()[valid, 0]
    pasted = paste_masks_in_boxes(masks, boxes[valid], height, width, mask_threshold)
    detections = []
    for category, score, (top, left, binary) in zip(classes, scores, pasted):
        detection = _detection(category, score, top, left, binary)
        if detection is not None:
            detections.append(detection)
    return detections


def postprocessed_instances_to_detections(instances: Instances) -> list[Detection]:
    """Turn full-size binary ``pred_masks`` (e.g. from TTA) into crop detections."""
    masks = instances.pred_masks.cpu().numpy()
    scores = instances.scores.cpu().tolist()
    classes = instances.pred_classes.cpu().tolist()
    detections = [_detection(c, s, 0, 0, m) for c, s, m in zip(classes, scores, masks)]
    return [d for d in detections if d is not None]


def tile_windows(
    height: int, width: int, tile: int, overlap: int
) -> list[tuple[int, int, int, int]]:
    """Overlapping ``(top, left, bottom, right)`` windows covering an image.

    Windows are ``tile`` pixels wide (or the whole side when smaller), start ``tile - overlap``
    apart, and the last one is aligned to the image edge, so every overlap is at least
    ``overlap`` pixels.
    """
    if overlap >= tile:
        raise ValueError(f"TEST.TILING.OVERLAP ({overlap}) must be smaller than TILE_SIZE ({tile})")

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        step = tile - overlap
        positions = list(range(0, size - tile, step))
        return positions + [size - tile]

    return [
        (top, left, min(top + tile, height), min(left + tile, width))
        for top in starts(height)
        for left in starts(width)
    ]


def merge_tile_detections(
    tiles: Sequence[tuple[tuple[int, int, int, int], list[Detection]]],
    height: int,
    width: int,
    edge_margin: int = 1,
) -> list[Detection]:
    """Combine per-tile detections (in tile coordinates) into one image's detections.

    A detection within ``edge_margin`` pixels of a tile edge that lies inside the image is a cell
    cut by the tile and is dropped: with an overlap wider than any cell, another tile holds it
    whole. A cell whole in several tiles is kept once: the highest-scoring copy removes its
    best-matching copy (box IoU above ``TILE_MERGE_IOU``, any class) from each other tile.
    """
    kept: list[Detection] = []
    tile_of: list[int] = []
    for tile, ((top, left, bottom, right), detections) in enumerate(tiles):
        for det in detections:
            x0, y0, x1, y1 = det.box
            cut = (
                (top > 0 and y0 <= edge_margin)
                or (left > 0 and x0 <= edge_margin)
                or (bottom < height and y1 >= bottom - top - edge_margin)
                or (right < width and x1 >= right - left - edge_margin)
            )
            if not cut:
                kept.append(
                    Detection(det.category, det.score, det.top + top, det.left + left, det.mask)
                )
                tile_of.append(tile)
    if len(kept) < 2:
        return kept
    # Greedy, by score: a kept detection removes its best-matching copy (IoU above the
    # threshold) from each *other* tile. Within a tile the model's own NMS already decided
    # which overlapping cells to keep, and a copy stands for one cell, not for its neighbours.
    matches = _tile_overlap_matches(kept, tile_of, [window for window, _ in tiles])
    removed = [False] * len(kept)
    result = []
    for i in sorted(range(len(kept)), key=lambda k: -kept[k].score):
        if removed[i]:
            continue
        result.append(kept[i])
        removed[i] = True
        best: dict[int, tuple[float, int]] = {}  # tile -> (IoU, -index): ties go to the first
        for iou, j in matches.get(i, ()):
            if not removed[j]:
                best[tile_of[j]] = max(best.get(tile_of[j], (0.0, 0)), (iou, -j))
        for _, negative_j in best.values():
            removed[-negative_j] = True
    return result


def _tile_overlap_matches(
    detections: Sequence[Detection],
    tile_of: Sequence[int],
    windows: Sequence[tuple[int, int, int, int]],
) -> dict[int, list[tuple[float, int]]]:
    """``{i: [(IoU, j), ...]}`` for detections of different tiles with box IoU above
    :data:`TILE_MERGE_IOU`, comparing only what can overlap.

    Why not one IoU matrix over every detection: a 20k x 20k image holds hundreds of thousands
    of cells (a dense matrix of ~40 GB). A detection lies inside its own tile's window, so it
    can only match a detection of a tile whose window overlaps its own, and only if its box
    reaches into that window. Each pair of overlapping windows therefore compares the boxes of
    its overlap zone only: memory and time grow with the cells along tile seams.
    """
    boxes = np.array([d.box for d in detections], dtype=np.float32).reshape(-1, 4)
    tile_ids = np.asarray(tile_of)
    win = np.array(windows, dtype=np.float32).reshape(-1, 4)  # top, left, bottom, right
    members = [np.flatnonzero(tile_ids == t) for t in range(len(windows))]
    matches: dict[int, list[tuple[float, int]]] = {}
    pairs = (
        (win[:, None, 0] < win[None, :, 2])
        & (win[None, :, 0] < win[:, None, 2])
        & (win[:, None, 1] < win[None, :, 3])
        & (win[None, :, 1] < win[:, None, 3])
    )
    for a, b in zip(*np.nonzero(np.triu(pairs, k=1))):
        in_a = members[a][_boxes_reach(boxes[members[a]], win[b])]
        in_b = members[b][_boxes_reach(boxes[members[b]], win[a])]
        if in_a.size == 0 or in_b.size == 0:
            continue
        iou = box_iou(torch.from_numpy(boxes[in_a]), torch.from_numpy(boxes[in_b])).numpy()
        for row, col in zip(*np.nonzero(iou > TILE_MERGE_IOU)):
            i, j, value = int(in_a[row]), int(in_b[col]), float(iou[row, col])
            matches.setdefault(i, []).append((value, j))
            matches.setdefault(j, []).append((value, i))
    return matches


def _boxes_reach(boxes: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Which ``(x0, y0, x1, y1)`` boxes overlap a ``(top, left, bottom, right)`` window."""
    top, left, bottom, right = window
    return (
        (boxes[:, 0] < right) & (boxes[:, 2] > left) & (boxes[:, 1] < bottom) & (boxes[:, 3] > top)
    )


def detections_to_results(
    detections: Sequence[Detection], image_id: int, height: int, width: int
) -> list[dict]:
    """COCO results entries for one image: ``category_id`` 1..4, tight ``[x, y, w, h]`` box of
    the mask, ``score`` and RLE ``segmentation`` with ``str`` counts."""
    rles = encode_crops([InstanceCrop(d.top, d.left, d.mask) for d in detections], height, width)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(det.category) + 1,
            "bbox": [
                float(det.left),
                float(det.top),
                float(det.mask.shape[1]),
                float(det.mask.shape[0]),
            ],
            "score": float(det.score),
            "segmentation": rle,
        }
        for det, rle in zip(detections, rles)
    ]


class CellPredictor:
    """Predict cells on BGR images with a config and its ``MODEL.WEIGHTS``.

    Unlike detectron2's ``DefaultPredictor`` it takes batches (``TEST.IMS_PER_BATCH``), keeps
    masks as crops, tiles large images and optionally runs test-time augmentation (``TEST.AUG``).
    """

    def __init__(self, cfg: CfgNode, tta: bool = False) -> None:
        """Build the model in eval mode and load ``MODEL.WEIGHTS`` (random weights when empty).

        Raises:
            WeightsUnavailableError: the weights cannot be read, or (``WeightsMismatchError``)
                leave model tensors unset: predicting with them would use random values.
        """
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if cfg.MODEL.WEIGHTS:
            trust = cfg.MODEL.CELLSEG.TRUST_PICKLE
            checkpointer = AtomicDetectionCheckpointer(self.model, trust_pickle=trust)
            checkpointer.load(cfg.MODEL.WEIGHTS)  # strict_fit: weights that do not fit stop here
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with a randomly initialised model")
        self.mask_threshold = float(getattr(self.model, "mask_threshold", 0.5))
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.tta_model = CellRCNNWithTTA(self.cfg, self.model) if tta else None
        self.detection_cap = int(cfg.TEST.DETECTIONS_PER_IMAGE)
        #: Images (a tiled image counts once) whose model output reached ``detection_cap``.
        self.images_at_detection_cap = 0
        self._inputs_at_cap = 0  # model inputs (images or tiles) at the cap, running total
        self.batch_size = max(1, cfg.TEST.IMS_PER_BATCH)
        tiling = cfg.TEST.TILING
        self.tile_above, self.tile_size, self.tile_overlap = (
            tiling.MAX_SIZE,
            tiling.TILE_SIZE,
            tiling.OVERLAP,
        )

    def _model_input(self, image: np.ndarray) -> dict:
        """Resize as in evaluation and convert to the model's CHW tensor and format."""
        if self.cfg.INPUT.FORMAT == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    @torch.no_grad()
    def _predict_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Run the model once on a batch of (untiled) images."""
        if self.tta_model is not None:
            outputs = []
            for image in images:
                height, width = image.shape[:2]
                chw = image[:, :, ::-1] if self.cfg.INPUT.FORMAT == "RGB" else image
                tensor = torch.as_tensor(np.ascontiguousarray(chw.transpose(2, 0, 1)))
                result = self.tta_model([{"image": tensor, "height": height, "width": width}])
                self._inputs_at_cap += len(result[0]["instances"]) >= self.detection_cap
                outputs.append(postprocessed_instances_to_detections(result[0]["instances"]))
            return outputs
        inputs = [self._model_input(image) for image in images]
        raw = self.model.inference(inputs, do_postprocess=False)
        self._inputs_at_cap += sum(len(instances) >= self.detection_cap for instances in raw)
        return [
            raw_instances_to_detections(
                instances, item["height"], item["width"], self.mask_threshold
            )
            for instances, item in zip(raw, inputs)
        ]

    def _needs_tiles(self, image: np.ndarray) -> bool:
        return self.tile_above > 0 and max(image.shape[:2]) > self.tile_above

    def predict_tiled(
        self, image: np.ndarray, predict: Callable[[list[np.ndarray]], list[list[Detection]]]
    ) -> list[Detection]:
        """Predict a large image tile by tile with ``predict`` and merge the tiles' detections."""
        height, width = image.shape[:2]
        windows = tile_windows(height, width, self.tile_size, self.tile_overlap)
        per_tile = []
        for start in range(0, len(windows), self.batch_size):
            batch = windows[start : start + self.batch_size]
            crops = [image[top:bottom, left:right] for top, left, bottom, right in batch]
            per_tile.extend(zip(batch, predict(crops)))
        return merge_tile_detections(per_tile, height, width)

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Predict every image (HxWx3 uint8 BGR, any sizes); returns detections per image."""
        results: list[list[Detection] | None] = [None] * len(images)
        small = [i for i, image in enumerate(images) if not self._needs_tiles(image)]
        for start in range(0, len(small), self.batch_size):
            indices = small[start : start + self.batch_size]
            before = self._inputs_at_cap
            for index, detections in zip(
                indices, self._predict_batch([images[i] for i in indices])
            ):
                results[index] = detections
            self.images_at_detection_cap += self._inputs_at_cap - before
        for index, image in enumerate(images):
            if results[index] is None:
                before = self._inputs_at_cap
                results[index] = self.predict_tiled(image, self._predict_batch)
                self.images_at_detection_cap += self._inputs_at_cap > before
        return results

    def warn_detection_cap(self, num_images: int) -> None:
        """Log one warning when any image so far reached ``TEST.DETECTIONS_PER_IMAGE``.

        Why once, at the end: a dense folder may hit the cap on thousands of images; one line
        with the count and the key to raise tells the user what to do without flooding the log.

        Args:
            num_images: how many images the run predicted, for the message.
        """
        if self.images_at_detection_cap:
            logger.warning(
                "%d of %d image(s) reached the detection cap TEST.DETECTIONS_PER_IMAGE=%d (for "
                "tiled images: in at least one tile), so cells may be missing; raise it, e.g. "
                "TEST.DETECTIONS_PER_IMAGE %d (configs/mask_rcnn_R_50_FPN_dense_cells.yaml uses "
                "1000)",
                self.images_at_detection_cap,
                num_images,
                self.detection_cap,
                2 * self.detection_cap,
            )
