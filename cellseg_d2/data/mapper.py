"""``CellDatasetMapper``: detectron2's ``DatasetMapper`` with the augmentations cells need.

What it adds to the stock mapper, and why:
- images come from the project reader (:func:`cellseg_d2.data.io.read_image`), which handles RGBA,
  16-bit and float TIFFs that detectron2's PIL-based reader mangles;
- vertical flips and 90-degree rotations on top of detectron2's horizontal flip: microscopy has no
  up, down, left or right;
- an albumentations ``ElasticTransform`` warping the image and every instance mask with the same
  displacement field (the seed study's alpha 30, sigma 12, p 0.3);
- boxes are recomputed from the transformed masks and instances that vanished are dropped.

All instance masks of an image are decoded once, in one pycocotools call, and transformed as one
stack; the elastic warp moves them bit-packed (8 masks per byte plane), which is exact because
masks are remapped with nearest-neighbour sampling.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from .io import read_image

__all__ = ["CellDatasetMapper", "RandomRotation90", "Rot90Transform"]

logger = logging.getLogger(__name__)

# cv2 functions take at most this many channels at once (OpenCV 5 lowered the limit to 128).
_CV2_MAX_CHANNELS = 128


class Rot90Transform(T.Transform):
    """Rotate by ``k`` quarter turns counter-clockwise (``np.rot90`` semantics): lossless."""

    def __init__(self, height: int, width: int, k: int) -> None:
        """Args:
        height, width: size of the image before rotation.
        k: number of quarter turns, 0..3.
        """
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Rotate an HxW or HxWxC array (image or mask stack)."""
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Rotate Nx2 (x, y) points the same way as the pixels."""
        h, w = self.height, self.width
        x, y = coords[:, 0].copy(), coords[:, 1].copy()
        for _ in range(self.k % 4):
            x, y = y, w - x
            h, w = w, h
        return np.stack([x, y], axis=1)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Masks rotate exactly like images."""
        return self.apply_image(segmentation)

    def inverse(self) -> T.Transform:
        """The rotation by the remaining quarter turns."""
        k = self.k % 4
        h, w = (self.width, self.height) if k % 2 else (self.height, self.width)
        return Rot90Transform(h, w, (4 - k) % 4)


class RandomRotation90(T.Augmentation):
    """With probability ``prob``, rotate by a random 90, 180 or 270 degrees."""

    def __init__(self, prob: float = 0.5) -> None:
        """Args:
        prob: probability of rotating at all.
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """Draw the rotation from numpy's global RNG (seeded per worker by detectron2)."""
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        return Rot90Transform(h, w, int(np.random.randint(1, 4)))


def _transform_mask_stack(transforms: T.TransformList, masks: np.ndarray) -> np.ndarray:
    """Apply geometric ``transforms`` to an HxWxN uint8 mask stack.

    Flips, crops and rotations handle any channel count; resizes go through cv2 in chunks of
    at most 128 channels with nearest-neighbour sampling, which keeps masks binary.
    """
    for tfm in transforms.transforms:
        if isinstance(tfm, T.ResizeTransform):
            chunks = [
                cv2.resize(
                    np.ascontiguousarray(masks[:, :, i : i + _CV2_MAX_CHANNELS]),
                    (tfm.new_w, tfm.new_h),
                    interpolation=cv2.INTER_NEAREST,
                ).reshape(tfm.new_h, tfm.new_w, -1)
                for i in range(0, masks.shape[2], _CV2_MAX_CHANNELS)
            ]
            masks = np.concatenate(chunks, axis=2)
        else:
            masks = tfm.apply_segmentation(masks)
    return masks


class CellDatasetMapper(DatasetMapper):
    """A ``DatasetMapper`` that reads cell TIFFs and adds elastic, flip and rot90 augmentation.

    Configure with ``INPUT.ELASTIC.*`` and ``INPUT.GEOMETRIC.*`` (see ``add_cellseg_config``); the
    rest (resize, crop, format) is detectron2's. Expects ``INPUT.MASK_FORMAT: bitmask``.
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
        if is_train:
            geo = cfg.INPUT.GEOMETRIC
            # detectron2's own RandomFlip (from INPUT.RANDOM_FLIP) is replaced by ours.
            augs = [a for a in ret["augmentations"] if not isinstance(a, T.RandomFlip)]
            if geo.HFLIP_PROB > 0:
                augs.append(T.RandomFlip(prob=geo.HFLIP_PROB, horizontal=True, vertical=False))
            if geo.VFLIP_PROB > 0:
                augs.append(T.RandomFlip(prob=geo.VFLIP_PROB, horizontal=False, vertical=True))
            if geo.ROT90_PROB > 0:
                augs.append(RandomRotation90(prob=geo.ROT90_PROB))
            ret["augmentations"] = augs
            ret["recompute_boxes"] = cfg.MODEL.MASK_ON
        elastic = cfg.INPUT.ELASTIC
        ret["elastic_prob"] = elastic.PROB if (is_train and elastic.ENABLED) else 0.0
        ret["elastic_alpha"] = elastic.ALPHA
        ret["elastic_sigma"] = elastic.SIGMA
        return ret

    def _elastic(self, image: np.ndarray, masks: np.ndarray | None) -> tuple[np.ndarray, Any]:
        """Warp the image and an HxWxN mask stack with one displacement field.

        The albumentations seed is drawn from numpy's global RNG so that detectron2's per-worker
        seeding makes the warp reproducible.
        """
        self.elastic.set_random_seed(int(np.random.randint(0, 2**31 - 1)))
        if masks is None or masks.shape[2] == 0:
            return self.elastic(image=image)["image"], masks
        num = masks.shape[2]
        packed = np.packbits(masks.astype(bool), axis=2)  # HxWx(ceil(N/8))
        out = self.elastic(image=image, masks=np.moveaxis(packed, 2, 0))
        warped = np.moveaxis(np.asarray(out["masks"]), 0, 2)
        return out["image"], np.unpackbits(warped, axis=2, count=num)

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        """Turn one dataset dict into the model's input: ``image`` tensor and ``instances``."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"])
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
        masks = None
        if self.use_instance_mask:
            if annotations:  # one C call decodes every RLE into an HxWxN stack
                masks = mask_util.decode([a["segmentation"] for a in annotations])
                masks = _transform_mask_stack(transforms, masks)
            else:
                masks = np.zeros((*image.shape[:2], 0), np.uint8)
        if self.elastic_prob > 0 and np.random.rand() < self.elastic_prob:
            image, masks = self._elastic(image, masks)

        height, width = image.shape[:2]
        instances = Instances((height, width))
        instances.gt_classes = torch.tensor(
            [a["category_id"] for a in annotations], dtype=torch.int64
        )
        if masks is not None:
            gt_masks = BitMasks(
                torch.from_numpy(np.ascontiguousarray(np.moveaxis(masks, 2, 0))).bool()
            )
            instances.gt_masks = gt_masks
            instances.gt_boxes = gt_masks.get_bounding_boxes()
        else:
            boxes = [
                utils.transform_instance_annotations(a, transforms, (height, width))["bbox"]
                for a in annotations
            ]
            instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return dataset_dict
