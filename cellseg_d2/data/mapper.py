"""``CellDatasetMapper``: detectron2's ``DatasetMapper`` with the augmentations cells need.

What it adds to the stock mapper, and why:
- images come from the project reader (:func:`cellseg_d2.data.io.read_image`), which handles RGBA,
  16-bit and float TIFFs that detectron2's PIL-based reader mangles;
- vertical flips and 90-degree rotations on top of detectron2's horizontal flip: microscopy has no
  up, down, left or right;
- an albumentations ``ElasticTransform`` warping the image and every instance mask with the same
  displacement field (the seed study's alpha 30, sigma 12, p 0.3);
- boxes are recomputed from the transformed masks and instances that vanished are dropped;
- with ``INPUT.SCALE`` on, a resize by that factor replaces the short-edge resize (training and
  evaluation alike), and ``INPUT.STAIN``/``INPUT.COLOR`` add image-only stain and colour jitter
  (:mod:`cellseg_d2.data.stain`) at the end of the training augmentations.

Each instance mask is decoded once and kept as its tight crop; crops move through crop, resize,
flips and rotations on their own (cost ~ cell area, not cells x image area), and through the
elastic warp as a few uint16 label layers, which is exact because masks are remapped with
nearest-neighbour sampling.
"""

from __future__ import annotations

import logging
from typing import Any

import albumentations as A
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from scipy import ndimage

from cellseg_d2.config.scale import input_scale
from cellseg_d2.data.io import read_image
from cellseg_d2.data.rle import InstanceCrop, tight_crop
from cellseg_d2.data.stain import build_color_augmentations
from cellseg_d2.data.transforms import (
    RandomRotation90,
    RandomVFlip,
    Rot90Transform,
    build_resize,
)

__all__ = [
    "CellDatasetMapper",
]

logger = logging.getLogger(__name__)


def _decode_crops(annotations: list[dict], height: int, width: int) -> list[InstanceCrop | None]:
    """Decode each RLE and keep only the instance's tight crop.

    One annotation at a time, so memory stays at one image-sized mask however many cells the
    image holds. The annotation's ``bbox`` (XYWH) narrows the search for the tight box; without
    one the whole image is searched.
    """
    crops = []
    for annotation in annotations:
        full = mask_util.decode(annotation["segmentation"])
        x, y, w, h = annotation.get("bbox", (0, 0, width, height))
        top, left = max(0, int(y) - 1), max(0, int(x) - 1)
        bottom, right = min(height, int(np.ceil(y + h)) + 1), min(width, int(np.ceil(x + w)) + 1)
        crops.append(tight_crop(top, left, full[top:bottom, left:right] != 0))
    return crops


def _nearest_index(new_size: int, size: int) -> np.ndarray:
    """Source index of each output pixel of a nearest-neighbour resize from ``size`` to
    ``new_size`` pixels, exactly as PIL computes it for detectron2's ``ResizeTransform``.

    NOTE: PIL walks the pixel centres by repeated addition of the scale in double precision;
    ``np.cumsum`` repeats those additions, so even centres that land on an integer boundary
    round the same way and the crops match detectron2's full-mask resize bit for bit.
    """
    scale = size / new_size
    steps = np.full(new_size, scale)
    steps[0] = scale * 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), size - 1)


def _transform_crops(
    transforms: T.TransformList, crops: list[InstanceCrop | None], height: int, width: int
) -> list[InstanceCrop | None]:
    """Apply detectron2 geometric transforms to instance crops, exactly as to full masks.

    Crops, resizes, flips and quarter turns move and resample each crop on its own, so the
    cost is the cells' area, not (number of cells x image area). Any other transform falls back
    to the full-size mask and ``apply_segmentation``.
    """
    for tfm in transforms.transforms:
        # Photometric transforms (stain and colour jitter) leave every mask where it is.
        if isinstance(tfm, (T.NoOpTransform, T.ColorTransform, T.BlendTransform)):
            continue
        out: list[InstanceCrop | None] = []
        if isinstance(tfm, T.ResizeTransform):
            rows, cols = _nearest_index(tfm.new_h, tfm.h), _nearest_index(tfm.new_w, tfm.w)
            for crop in crops:
                if crop is None:
                    out.append(None)
                    continue
                h, w = crop.mask.shape
                r0, r1 = np.searchsorted(rows, [crop.top, crop.top + h])
                c0, c1 = np.searchsorted(cols, [crop.left, crop.left + w])
                sampled = crop.mask[rows[r0:r1] - crop.top][:, cols[c0:c1] - crop.left]
                out.append(tight_crop(int(r0), int(c0), sampled))
            height, width = tfm.new_h, tfm.new_w
        elif isinstance(tfm, T.CropTransform):
            for crop in crops:
                if crop is None:
                    out.append(None)
                    continue
                top, left = crop.top - tfm.y0, crop.left - tfm.x0
                r0, c0 = max(0, -top), max(0, -left)
                r1 = min(crop.mask.shape[0], tfm.h - top)
                c1 = min(crop.mask.shape[1], tfm.w - left)
                if r1 <= r0 or c1 <= c0:
                    out.append(None)
                    continue
                out.append(tight_crop(top + r0, left + c0, crop.mask[r0:r1, c0:c1]))
            height, width = tfm.h, tfm.w
        elif isinstance(tfm, (T.HFlipTransform, T.VFlipTransform, Rot90Transform)):
            for crop in crops:
                out.append(None if crop is None else _flip_or_rotate(tfm, crop, height, width))
            if isinstance(tfm, Rot90Transform) and tfm.k % 2:
                height, width = width, height
        else:
            for crop in crops:
                if crop is None:
                    out.append(None)
                    continue
                full = np.zeros((height, width), np.uint8)
                h, w = crop.mask.shape
                full[crop.top : crop.top + h, crop.left : crop.left + w] = crop.mask
                moved = tfm.apply_segmentation(full)
                out.append(tight_crop(0, 0, moved != 0))
                new_shape = moved.shape[:2]
            if any(c is not None for c in crops):
                height, width = new_shape
        crops = out
    return crops


def _flip_or_rotate(tfm: T.Transform, crop: InstanceCrop, height: int, width: int) -> InstanceCrop:
    """Move a crop through a flip or a quarter turn of the whole image."""
    top, left, mask = crop
    h, w = mask.shape
    if isinstance(tfm, T.HFlipTransform):
        return InstanceCrop(top, width - left - w, mask[:, ::-1].copy())
    if isinstance(tfm, T.VFlipTransform):
        return InstanceCrop(height - top - h, left, mask[::-1].copy())
    for _ in range(tfm.k % 4):  # one counter-clockwise quarter turn at a time
        top, left = width - left - w, top
        height, width, h, w = width, height, w, h
        mask = np.rot90(mask)
    return InstanceCrop(top, left, mask.copy())  # copy: positive strides for torch


def _paint_layers(crops: list[InstanceCrop], height: int, width: int) -> list[np.ndarray]:
    """Paint crops into as few uint16 label images as keep them from overlapping.

    Instance ``i`` gets label ``i + 1`` in the first layer where it overlaps nothing; cells
    rarely overlap, so this is usually one layer. Label layers warp exactly under
    nearest-neighbour sampling, however many cells there are.
    """
    layers: list[np.ndarray] = []
    for index, (top, left, mask) in enumerate(crops):
        h, w = mask.shape
        for layer in layers:
            region = layer[top : top + h, left : left + w]
            if not region[mask].any():
                region[mask] = index + 1
                break
        else:
            layer = np.zeros((height, width), np.uint16)
            layer[top : top + h, left : left + w][mask] = index + 1
            layers.append(layer)
    return layers


def _crops_from_layers(layers: list[np.ndarray], count: int) -> list[InstanceCrop | None]:
    """Read instance crops back from label layers (labels 1..count); missing ones vanished."""
    crops: list[InstanceCrop | None] = [None] * count
    for layer in layers:
        for label, box in enumerate(ndimage.find_objects(layer), start=1):
            if box is not None:
                rows, cols = box
                crops[label - 1] = InstanceCrop(rows.start, cols.start, layer[box] == label)
    return crops


class CellDatasetMapper(DatasetMapper):
    """A ``DatasetMapper`` that reads cell TIFFs and adds elastic, flip and rot90 augmentation.

    Configure with ``INPUT.ELASTIC.*``, ``INPUT.GEOMETRIC.*``, ``INPUT.STAIN.*``,
    ``INPUT.COLOR.*`` and ``INPUT.SCALE`` (see ``add_cellseg_config``); the rest (short-edge
    resize when the scale is off, crop, format) is detectron2's. Expects
    ``INPUT.MASK_FORMAT: bitmask``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        elastic_prob: float = 0.0,
        elastic_alpha: float = 30.0,
        elastic_sigma: float = 12.0,
        **kwargs: Any,
    ) -> None:
        """Args:
        is_train: training (augment, keep annotations) or inference.
        elastic_prob: probability of the elastic warp per training sample (0 disables it).
        elastic_alpha: displacement scale in pixels.
        elastic_sigma: smoothing of the displacement field in pixels.
        kwargs: everything ``DatasetMapper`` takes.
        """
        super().__init__(is_train, **kwargs)
        if self.use_instance_mask and self.instance_mask_format != "bitmask":
            raise ValueError("CellDatasetMapper needs INPUT.MASK_FORMAT 'bitmask' (RLE masks)")
        if self.image_format not in ("BGR", "RGB"):
            raise ValueError(
                f"CellDatasetMapper supports INPUT.FORMAT BGR or RGB, not {self.image_format}"
            )
        self.elastic_prob = elastic_prob if is_train else 0.0
        self.elastic = A.ElasticTransform(alpha=elastic_alpha, sigma=elastic_sigma, p=1.0)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        """Add the flips, rotation and elastic settings to ``DatasetMapper``'s arguments."""
        ret = super().from_config(cfg, is_train)
        if input_scale(cfg) > 0:  # INPUT.SCALE replaces the short-edge resize, in place
            ret["augmentations"] = [
                build_resize(cfg, is_train) if isinstance(a, T.ResizeShortestEdge) else a
                for a in ret["augmentations"]
            ]
        if is_train:
            geo = cfg.INPUT.GEOMETRIC
            # detectron2's own RandomFlip (from INPUT.RANDOM_FLIP) is replaced by ours.
            augs = [a for a in ret["augmentations"] if not isinstance(a, T.RandomFlip)]
            if geo.HFLIP_PROB > 0:
                augs.append(T.RandomFlip(prob=geo.HFLIP_PROB, horizontal=True, vertical=False))
            if geo.VFLIP_PROB > 0:
                augs.append(RandomVFlip(prob=geo.VFLIP_PROB))
            if geo.ROT90_PROB > 0:
                augs.append(RandomRotation90(prob=geo.ROT90_PROB))
            augs.extend(build_color_augmentations(cfg))  # last: after every geometric draw
            ret["augmentations"] = augs
        elastic = cfg.INPUT.ELASTIC
        ret["elastic_prob"] = elastic.PROB if (is_train and elastic.ENABLED) else 0.0
        ret["elastic_alpha"] = elastic.ALPHA
        ret["elastic_sigma"] = elastic.SIGMA
        return ret

    def _elastic(
        self, image: np.ndarray, crops: list[InstanceCrop | None] | None
    ) -> tuple[np.ndarray, list[InstanceCrop | None] | None]:
        """Warp the image and the instance masks with one displacement field.

        The masks travel as a few label layers (see :func:`_paint_layers`). The albumentations
        seed is drawn from numpy's global RNG, which detectron2 seeds per worker, so the warp is
        reproducible.
        """
        self.elastic.set_random_seed(int(np.random.randint(0, 2**31 - 1)))
        present = [i for i, crop in enumerate(crops or []) if crop is not None]
        if not present:
            return self.elastic(image=image)["image"], crops
        if len(present) >= 2**16:
            raise ValueError("more than 65535 instances in one image")
        height, width = image.shape[:2]
        layers = _paint_layers([crops[i] for i in present], height, width)
        out = self.elastic(image=image, masks=layers)
        warped = _crops_from_layers(list(out["masks"]), len(present))
        # Back to one entry per annotation: instances lost earlier stay None, in place.
        moved: list[InstanceCrop | None] = [None] * len(crops)
        for index, crop in zip(present, warped):
            moved[index] = crop
        return out["image"], moved

    def _instances(
        self,
        annotations: list[dict],
        crops: list[InstanceCrop | None] | None,
        transforms: T.TransformList,
        image_size: tuple[int, int],
    ) -> Instances:
        """Ground truth for the model: classes, boxes tight around the transformed masks and
        the masks themselves; instances whose mask vanished are dropped."""
        height, width = image_size
        instances = Instances(image_size)
        classes = [a["category_id"] for a in annotations]
        if not self.use_instance_mask:
            boxes = [
                utils.transform_instance_annotations(a, transforms, image_size)["bbox"]
                for a in annotations
            ]
            instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
            instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            return utils.filter_empty_instances(instances)
        kept = [i for i, crop in enumerate(crops or []) if crop is not None]
        masks = torch.zeros((len(kept), height, width), dtype=torch.bool)
        boxes = torch.zeros((len(kept), 4), dtype=torch.float32)
        for row, index in enumerate(kept):
            top, left, mask = crops[index]
            h, w = mask.shape
            masks[row, top : top + h, left : left + w] = torch.from_numpy(mask)
            boxes[row] = torch.tensor([left, top, left + w, top + h], dtype=torch.float32)
        instances.gt_classes = torch.tensor([classes[i] for i in kept], dtype=torch.int64)
        instances.gt_boxes = Boxes(boxes)
        instances.gt_masks = BitMasks(masks)
        return instances

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        """Turn one dataset dict into the model's input: ``image`` tensor and ``instances``.

        NOTE: a rewrite of detectron2's ``DatasetMapper.__call__``
        (``detectron2/data/dataset_mapper.py``), step for step, instead of ``super().__call__``:
        two of its steps sit in the middle of that function with no hook to override. It reads
        the image with PIL (``detection_utils.read_image``), which mangles the RGBA, 16-bit and
        float TIFFs of microscopy, and it decodes every instance mask at full image size
        (``annotations_to_instances``), which costs cells x image area per sample. Its
        semantic-segmentation and precomputed-proposal branches are left out: cell datasets
        carry neither. The shared steps (``check_image_size``, ``AugInput`` through
        ``self.augmentations``, the CHW tensor) call detectron2's own functions.
        """
        # Shallow copy: nothing below mutates the nested annotations, and deep-copying hundreds
        # of RLE dicts per image costs more than the rest of the bookkeeping.
        dataset_dict = dict(dataset_dict)
        image = read_image(dataset_dict["file_name"])
        original_size = image.shape[:2]
        if self.image_format == "RGB":
            image = np.ascontiguousarray(image[:, :, ::-1])
        utils.check_image_size(dataset_dict, image)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return dataset_dict

        annotations = [a for a in dataset_dict.pop("annotations", []) if not a.get("iscrowd", 0)]
        height, width = image.shape[:2]
        crops = None
        if self.use_instance_mask and annotations:
            crops = _decode_crops(annotations, *original_size)
            crops = _transform_crops(transforms, crops, *original_size)
        if self.elastic_prob > 0 and np.random.rand() < self.elastic_prob:
            image, crops = self._elastic(image, crops)
        dataset_dict["instances"] = self._instances(annotations, crops, transforms, (height, width))
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return dataset_dict
