"""The cell meta-architecture: Mask R-CNN whose mask binarisation threshold is configurable.

detectron2 pastes mask probabilities into the image and cuts them at a hard-coded 0.5. Cell
boundaries are where instances touch, and the seed study found 0.6 separates neighbours better,
so :class:`CellRCNN` reads ``MODEL.CELLSEG.MASK_THRESHOLD`` and applies it both in plain
inference and in test-time augmentation (:class:`CellRCNNWithTTA`).
"""

from __future__ import annotations

from collections.abc import Callable
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

    detectron2's ``GeneralizedRCNNWithTTA._inference_one_image`` ends its mask stage with
    ``detector_postprocess`` at the fixed 0.5. So this subclass lets detectron2 run the box
    stage (augment, detect, merge) with masks turned off in its config copy, then runs the mask
    stage with detectron2's own helpers and binarises with the model's :meth:`CellRCNN.postprocess`.
    """

    def __init__(
        self,
        cfg: CfgNode,
        model: GeneralizedRCNN,
        tta_mapper: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
        batch_size: int = 3,
    ) -> None:
        """Args: as ``GeneralizedRCNNWithTTA`` (``model`` may be a plain ``GeneralizedRCNN``,
        whose masks are then binarised at detectron2's 0.5)."""
        super().__init__(cfg, model, tta_mapper=tta_mapper, batch_size=batch_size)
        self.mask_on = bool(self.cfg.MODEL.MASK_ON)
        # NOTE: self.cfg is the TTA's own clone; MASK_ON there only steers the parent's
        # _inference_one_image, which then stops after merging the boxes.
        self.cfg.defrost()
        self.cfg.MODEL.MASK_ON = False
        self.cfg.freeze()

    def _inference_one_image(self, inputs: dict[str, Any]) -> dict[str, Instances]:
        """detectron2's merged boxes, then masks averaged over the augmentations, binarised at
        the model's threshold."""
        merged = super()._inference_one_image(inputs)["instances"]
        if not self.mask_on:
            return {"instances": merged}
        # The mask stage of detectron2's GeneralizedRCNNWithTTA._inference_one_image, on a fresh
        # set of augmented inputs (the parent does not hand its own back).
        augmented_inputs, tfms = self._get_augmented_inputs(inputs)
        augmented_instances = self._rescale_detected_boxes(augmented_inputs, merged, tfms)
        outputs = self._batch_inference(augmented_inputs, augmented_instances)
        del augmented_inputs, augmented_instances
        merged.pred_masks = self._reduce_pred_masks(outputs, tfms)
        height, width = inputs["height"], inputs["width"]
        if isinstance(self.model, CellRCNN):
            return {"instances": self.model.postprocess(merged, height, width)}
        return {"instances": detector_postprocess(merged, height, width)}
