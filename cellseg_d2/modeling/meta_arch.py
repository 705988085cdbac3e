"""The cell meta-architecture: Mask R-CNN whose mask binarisation threshold is configurable.

detectron2 pastes mask probabilities into the image and cuts them at a hard-coded 0.5. Cell
boundaries are where instances touch, and the seed study found 0.6 separates neighbours better,
so :class:`CellRCNN` reads ``MODEL.CELLSEG.MASK_THRESHOLD`` and applies it both in plain
inference and in test-time augmentation (:class:`CellRCNNWithTTA`).
"""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, GeneralizedRCNNWithTTA
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

__all__ = ["CellRCNN", "CellRCNNWithTTA"]


@META_ARCH_REGISTRY.register()
class CellRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` with a configurable mask threshold in postprocessing.

    Training is unchanged; only :meth:`inference` differs, by calling :meth:`postprocess` instead
    of detectron2's static ``_postprocess``.
    """

    @configurable
    def __init__(self, *, mask_threshold: float = 0.5, **kwargs: Any) -> None:
        """Args:
        mask_threshold: probability above which a pasted mask pixel is foreground.
        kwargs: everything ``GeneralizedRCNN`` takes.
        """
        super().__init__(**kwargs)
        if not 0.0 <= mask_threshold <= 1.0:
            raise ValueError(
                f"MODEL.CELLSEG.MASK_THRESHOLD must be in [0, 1], got {mask_threshold}"
            )
        self.mask_threshold = mask_threshold

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        """Add ``MODEL.CELLSEG.MASK_THRESHOLD`` to ``GeneralizedRCNN``'s arguments."""
        ret = super().from_config(cfg)
        ret["mask_threshold"] = cfg.MODEL.CELLSEG.MASK_THRESHOLD
        return ret

    def postprocess(self, instances: Instances, height: int, width: int) -> Instances:
        """Rescale raw detections to the requested output size and binarise masks at the
        configured threshold."""
        return detector_postprocess(instances, height, width, mask_threshold=self.mask_threshold)

    def inference(
        self,
        batched_inputs: list[dict[str, Any]],
        detected_instances: list[Instances] | None = None,
        do_postprocess: bool = True,
    ) -> list[dict[str, Instances]] | list[Instances]:
        """Run inference as ``GeneralizedRCNN`` does, postprocessing with :meth:`postprocess`.

        The output size of an image is its dict's ``height``/``width`` when given (the original
        image size), else the network input size, as in detectron2.
        """
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        outputs = []
        for instances, inputs in zip(results, batched_inputs):
            height = inputs.get("height", instances.image_size[0])
            width = inputs.get("width", instances.image_size[1])
            outputs.append({"instances": self.postprocess(instances, height, width)})
        return outputs


class CellRCNNWithTTA(GeneralizedRCNNWithTTA):
    """detectron2's flip-and-scale TTA, binarising merged masks at the model's threshold.

    NOTE: detectron2's ``GeneralizedRCNNWithTTA`` ends with ``detector_postprocess`` at the fixed
    0.5; this subclass repeats its short per-image merge with the model's :meth:`postprocess`.
    """

    def _inference_one_image(self, inputs: dict[str, Any]) -> dict[str, Instances]:
        orig_shape = (inputs["height"], inputs["width"])
        augmented_inputs, tfms = self._get_augmented_inputs(inputs)
        with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
            all_boxes, all_scores, all_classes = self._get_augmented_boxes(augmented_inputs, tfms)
        merged = self._merge_detections(all_boxes, all_scores, all_classes, orig_shape)
        if not self.cfg.MODEL.MASK_ON:
            return {"instances": merged}
        augmented_instances = self._rescale_detected_boxes(augmented_inputs, merged, tfms)
        outputs = self._batch_inference(augmented_inputs, augmented_instances)
        del augmented_inputs, augmented_instances
        merged.pred_masks = self._reduce_pred_masks(outputs, tfms)
        postprocess = getattr(self.model, "postprocess", None)
        if postprocess is None:  # a plain GeneralizedRCNN: detectron2's fixed threshold
            return {"instances": detector_postprocess(merged, *orig_shape)}
        return {"instances": postprocess(merged, *orig_shape)}
