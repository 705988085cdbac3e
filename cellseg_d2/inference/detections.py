"""Detections as crops, mask pasting and tile merging, with torch and numpy only (no detectron2).

The one home of everything after the network that both predictors share: box rescaling, the
mask paste, tight crops, tiling and the merge of tiles. The eager
:class:`~cellseg_d2.inference.predictor.CellPredictor` and the exported model's
:class:`~cellseg_d2.inference.exported.ExportedPredictor` both import it, so they give the same
detections by construction.

Why without detectron2: an exported model must run where detectron2 is not installed
(``tests/inference/test_model_export.py`` runs the exported runtime in such a process).

Speed is won around the model, so predictions never become full-size masks: each detection's
28x28 mask is pasted only into its own box (the values detectron2's paste computes, for many
boxes per call), thresholded there, trimmed to its tight extent and kept as a small crop.

Images larger than ``TEST.TILING.MAX_SIZE`` run as overlapping tiles: a detection touching a tile
edge inside the image is a cell cut by the tile and is dropped (the neighbouring tile, overlapping
by more than a cell, holds it whole); cells whole in two tiles are merged by NMS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = [
    "PASTE_CHUNK",
    "TILE_MERGE_IOU",
    "Detection",
    "merge_tile_detections",
    "greedy_tile_survivors",
    "paste_masks_in_boxes",
    "predict_in_tiles",
    "raw_outputs_to_detections",
    "tile_overlap_matches",
    "tile_windows",
    "trim_detection",
]

#: IoU above which two whole detections from different tiles are the same cell.
TILE_MERGE_IOU = 0.5
#: Masks pasted together in one ``grid_sample`` call (sorted by size, so padding stays small).
PASTE_CHUNK = 32


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


def trim_detection(
    category: int, score: float, top: int, left: int, mask: np.ndarray
) -> Detection | None:
    """A :class:`Detection` trimmed to its mask's tight box; None for an empty mask.

    Why: a detection is stored as its tight crop (its box is the mask's box, as a submission
    needs), and a mask left without a pixel by the threshold is no cell at all.

    NOTE: the same trim as :func:`cellseg_d2.data.rle.tight_crop`, which this module cannot
    import: importing ``cellseg_d2.data`` loads detectron2.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
    return Detection(category, score, top + int(rows[0]), left + int(cols[0]), crop)


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


def raw_outputs_to_detections(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    scores: torch.Tensor,
    mask_probs: torch.Tensor,
    input_size: tuple[int, int],
    height: int,
    width: int,
    mask_threshold: float,
) -> list[Detection]:
    """Turn a Mask R-CNN's raw outputs (network input scale) into detections at the image size.

    This is what an exported model needs after its graph: the graph returns boxes in the pixels
    of the resized input and 28x28 mask probabilities per box, not masks in the image. Boxes are
    scaled to ``height`` x ``width`` and clipped as detectron2's ``detector_postprocess`` does;
    masks are pasted as detectron2 pastes them (:func:`paste_masks_in_boxes`) and cut at
    ``mask_threshold``. Boxes left empty by clipping and masks with no pixel are dropped, as the
    eager predictor drops them.

    Args:
        boxes: N x 4 XYXY boxes in network-input pixels.
        classes: N 0-based class indices.
        scores: N confidences.
        mask_probs: N x 1 x M x M (or N x M x M) mask probabilities.
        input_size: ``(height, width)`` of the network input the boxes refer to.
        height, width: size of the original image the detections are for.
        mask_threshold: a pasted pixel is foreground where its probability >= this.

    Returns:
        The detections, in the model's order.
    """
    in_h, in_w = input_size
    boxes = boxes.detach().to("cpu", torch.float32).clone()
    boxes[:, 0::2] *= width / in_w
    boxes[:, 1::2] *= height / in_h
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    valid = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).nonzero()[:, 0]
    if len(valid) == 0:
        return []
    masks = mask_probs.detach().cpu()
    masks = (masks[:, 0] if masks.dim() == 4 else masks)[valid]
    pasted = paste_masks_in_boxes(masks, boxes[valid], height, width, mask_threshold)
    kept = zip(classes.cpu()[valid].tolist(), scores.cpu()[valid].tolist(), pasted)
    detections = [trim_detection(c, s, top, left, binary) for c, s, (top, left, binary) in kept]
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
        return list(range(0, size - tile, tile - overlap)) + [size - tile]

    return [
        (top, left, min(top + tile, height), min(left + tile, width))
        for top in starts(height)
        for left in starts(width)
    ]


def predict_in_tiles(
    image: np.ndarray,
    tile_size: int,
    overlap: int,
    batch_size: int,
    predict: Callable[[list[np.ndarray]], list[list[Detection]]],
) -> list[Detection]:
    """Predict a large image tile by tile and merge the tiles' detections into the image's.

    Why one function: the eager and the exported predictor must tile alike to give the same
    cells; each passes its own ``predict`` (a batch of HxWx3 crops in, detections in crop
    pixels per crop out).

    Args:
        image: HxWx3 image.
        tile_size, overlap: the windows of :func:`tile_windows`.
        batch_size: tiles per ``predict`` call.
        predict: the model call on a list of tiles.

    Returns:
        The image's detections, see :func:`merge_tile_detections`.
    """
    height, width = image.shape[:2]
    windows = tile_windows(height, width, tile_size, overlap)
    per_tile = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        crops = [image[top:bottom, left:right] for top, left, bottom, right in batch]
        per_tile.extend(zip(batch, predict(crops)))
    return merge_tile_detections(per_tile, height, width)


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
    matches = tile_overlap_matches(kept, tile_of, [window for window, _ in tiles])
    survivors = greedy_tile_survivors([det.score for det in kept], tile_of, matches)
    return [kept[i] for i in survivors]


def greedy_tile_survivors(
    scores: Sequence[float],
    tile_of: Sequence[int],
    matches: dict[int, list[tuple[float, int]]],
) -> list[int]:
    """The indices that survive the tile merge, in the order visited (score, then index).

    Why one function: images cut into tiles and whole slides merge copies the same way. The
    best remaining detection stays and removes its best-matching copy (from
    :func:`tile_overlap_matches`) from each *other* tile; ties go to the first.
    """
    removed = [False] * len(scores)
    survivors = []
    for i in sorted(range(len(scores)), key=lambda k: (-scores[k], k)):
        if removed[i]:
            continue
        survivors.append(i)
        removed[i] = True
        best: dict[int, tuple[float, int]] = {}  # tile -> (IoU, -index): ties go to the first
        for iou, j in matches.get(i, ()):
            if not removed[j]:
                best[tile_of[j]] = max(best.get(tile_of[j], (0.0, 0)), (iou, -j))
        for _, negative_j in best.values():
            removed[-negative_j] = True
    return survivors


def tile_overlap_matches(
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
