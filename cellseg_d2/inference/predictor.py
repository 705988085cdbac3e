"""Inference on whole cell images: batching, test-time augmentation and tiling.

:class:`CellPredictor` runs the detectron2 model; what happens after the network (the mask
paste into crops, tiling and the merge of tiles) lives in :mod:`cellseg_d2.inference.detections`,
shared with the exported model's predictor. Submission RLEs are encoded from the crops
(:func:`detections_to_results`, through :func:`cellseg_d2.data.rle.encode_crops`), which costs
the cell's area instead of the image's.

The model returns at most ``TEST.DETECTIONS_PER_IMAGE`` detections per input, and a dense image
that reaches that cap silently loses cells. :class:`CellPredictor` counts the images that hit
it and :meth:`CellPredictor.warn_detection_cap` logs the count once per run. NOTE: the cap
applies per model input, so a tiled image is capped per tile and its merged result is NOT cut
to the cap again (cutting by score after merging would drop cells of whole regions); a tiled
image counts as hitting the cap when one of its tiles does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Instances

from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer
from cellseg_d2.config.scale import input_scale
from cellseg_d2.data.rle import InstanceCrop, encode_crops
from cellseg_d2.data.transforms import ResizeByFactor, build_resize
from cellseg_d2.errors import ConfigError
from cellseg_d2.inference.detections import (
    Detection,
    predict_in_tiles,
    raw_outputs_to_detections,
    trim_detection,
)
from cellseg_d2.modeling import CellRCNNWithTTA

__all__ = [
    "CellPredictor",
    "detections_to_results",
    "postprocessed_instances_to_detections",
    "raw_instances_to_detections",
]

logger = logging.getLogger(__name__)


def raw_instances_to_detections(
    instances: Instances, height: int, width: int, mask_threshold: float
) -> list[Detection]:
    """Turn the model's unprocessed output (network input scale, 28x28 mask probabilities) into
    detections at ``height`` x ``width``.

    Why a wrapper: detectron2 hands back ``Instances``; the work itself is
    :func:`~cellseg_d2.inference.detections.raw_outputs_to_detections` (boxes scaled and clipped
    as ``detector_postprocess`` does, masks pasted as detectron2 pastes them and cut at
    ``mask_threshold``, degenerate boxes and empty masks dropped), which the exported model's
    predictor calls on its graph's outputs.
    """
    return raw_outputs_to_detections(
        instances.pred_boxes.tensor,
        instances.pred_classes,
        instances.scores,
        instances.pred_masks,
        instances.image_size,
        height,
        width,
        mask_threshold,
    )


def postprocessed_instances_to_detections(instances: Instances) -> list[Detection]:
    """Turn full-size binary ``pred_masks`` (e.g. from TTA) into crop detections.

    Why: test-time augmentation merges full-size masks, so its output skips the crop paste; it
    is trimmed to the same crops here so every later step sees one form.
    """
    masks = instances.pred_masks.cpu().numpy()
    scores = instances.scores.cpu().tolist()
    classes = instances.pred_classes.cpu().tolist()
    detections = [trim_detection(c, s, 0, 0, m) for c, s, m in zip(classes, scores, masks)]
    return [d for d in detections if d is not None]


def detections_to_results(
    detections: Sequence[Detection], image_id: int, height: int, width: int
) -> list[dict]:
    """COCO results entries for one image: ``category_id`` 1..4, tight ``[x, y, w, h]`` box of
    the mask, ``score`` and RLE ``segmentation`` with ``str`` counts.

    Why the mask's box and not the regressed one: the submission checks compare each box with
    its mask's tight box.
    """
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
            ConfigError: an uncomputed ``INPUT.SCALE``, or ``INPUT.SCALE`` with ``tta``
                (detectron2's TTA resizes by ``TEST.AUG.MIN_SIZES``, not by the factor).
        """
        self.input_scale = input_scale(cfg)
        if tta and self.input_scale > 0:
            raise ConfigError(
                "test-time augmentation (TEST.AUG) resizes to TEST.AUG.MIN_SIZES and would "
                f"ignore INPUT.SCALE {self.input_scale}: predict without --tta"
            )
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if cfg.MODEL.WEIGHTS:
            trust = cfg.MODEL.CELLSEG.TRUST_PICKLE
            checkpointer = AtomicDetectionCheckpointer(self.model, trust_pickle=trust)
            checkpointer.load(cfg.MODEL.WEIGHTS)  # strict_fit: weights that do not fit stop here
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with a randomly initialised model")
        self.mask_threshold = float(getattr(self.model, "mask_threshold", 0.5))
        self.resize = build_resize(cfg, is_train=False)
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

    def model_input(self, image: np.ndarray) -> dict:
        """The network input of one HxWx3 uint8 BGR image, exactly as prediction feeds it.

        Resized as in evaluation (by ``INPUT.SCALE`` when it is on, else
        ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``; see :meth:`inputs_at_model_scale`) and
        turned into the model's CHW tensor in ``INPUT.FORMAT``, with the original
        ``height``/``width`` the detections are mapped back to. Public so that a benchmark or
        an export check can run the network alone on the very inputs the predictor would give
        it.

        Returns:
            ``{"image": CHW uint8 tensor, "height": int, "width": int}``.
        """
        if self.cfg.INPUT.FORMAT == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    @contextlib.contextmanager
    def inputs_at_model_scale(self, factor: float = 1.0) -> Iterator[None]:
        """Within it, every image is resized by exactly ``factor`` (1.0: taken as it is).

        Why: the tiles of a slide must all be seen at one scale. Slides with a known pixel size
        are read from their pyramid at the model's pixel size
        (:func:`~cellseg_d2.config.scale.model_pixel_size`), so they need no resize at all;
        slides read as scanned get ``INPUT.SCALE`` alone. The short-edge resize of
        ``INPUT.MIN_SIZE_TEST`` would scale each tile by its own size (a narrow tile at the
        slide's edge would be enlarged), so it never applies to tiles.
        """
        resize, self.resize = self.resize, ResizeByFactor(factor)
        try:
            yield
        finally:
            self.resize = resize

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
        inputs = [self.model_input(image) for image in images]
        raw = self.model.inference(inputs, do_postprocess=False)
        self._inputs_at_cap += sum(len(instances) >= self.detection_cap for instances in raw)
        return [
            raw_instances_to_detections(
                instances, item["height"], item["width"], self.mask_threshold
            )
            for instances, item in zip(raw, inputs)
        ]

    def _needs_tiles(self, image: np.ndarray) -> bool:
        """True when the image's longer side exceeds ``TEST.TILING.MAX_SIZE`` (0: never)."""
        return self.tile_above > 0 and max(image.shape[:2]) > self.tile_above

    def predict_tiled(
        self, image: np.ndarray, predict: Callable[[list[np.ndarray]], list[list[Detection]]]
    ) -> list[Detection]:
        """Predict a large image tile by tile with ``predict`` and merge the tiles' detections.

        ``TEST.TILING.TILE_SIZE``/``OVERLAP`` windows, ``TEST.IMS_PER_BATCH`` tiles per call
        (see :func:`~cellseg_d2.inference.detections.predict_in_tiles`).
        """
        return predict_in_tiles(image, self.tile_size, self.tile_overlap, self.batch_size, predict)

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
