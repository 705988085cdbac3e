"""Trace a cell Mask R-CNN into TorchScript or ONNX with detectron2's ``TracingAdapter``.

The traced function is the model's ``inference(..., do_postprocess=False)`` on one image: the
graph takes a float32 3 x H x W image (channel order ``INPUT.FORMAT``, 0-255, already resized),
normalises and pads it inside, and returns four tensors: boxes (N x 4, input pixels), classes,
scores and N x 1 x 28 x 28 mask probabilities. Returning a tuple instead of ``Instances`` is
what makes the file loadable in a new process (a scripted model returning ``Instances`` is not),
and stopping before the paste keeps the graph free of image-sized masks; the paste is
:func:`cellseg_d2.inference.detections.raw_outputs_to_detections`.

ONNX: torchvision exports its *aligned* ``roi_align`` (which detectron2's ROIAlignV2 pooler
uses) correctly only from opset 16, where ONNX's RoiAlign gained
``coordinate_transformation_mode="half_pixel"``; below it, the export silently drops the
half-pixel offset and the outputs differ from eager. :data:`MIN_ONNX_OPSET` is therefore 16 and
the default :data:`ONNX_OPSET` is 17 (checked equal to eager in
``tests/inference/test_model_export.py``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence

import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN

__all__ = [
    "MIN_ONNX_OPSET",
    "ONNX_OPSET",
    "export_onnx",
    "export_torchscript",
    "raw_inference",
    "tracing_adapter",
]

logger = logging.getLogger(__name__)

#: Lowest opset whose RoiAlign matches torchvision's aligned ROIAlign.
MIN_ONNX_OPSET = 16
#: The opset ``tools/export_model.py`` uses unless told otherwise.
ONNX_OPSET = 17


def raw_inference(
    model: GeneralizedRCNN, image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's detections for one image before postprocessing, as plain tensors.

    Args:
        model: a detectron2 R-CNN with masks, in eval mode.
        image: 3 x H x W float32 network input (resized, channel order ``INPUT.FORMAT``).

    Returns:
        ``(boxes, classes, scores, mask_probs)`` at the network input scale.
    """
    instances = model.inference([{"image": image}], do_postprocess=False)[0]
    return (
        instances.pred_boxes.tensor,
        instances.pred_classes,
        instances.scores,
        instances.pred_masks,
    )


def tracing_adapter(model: GeneralizedRCNN, sample: torch.Tensor) -> TracingAdapter:
    """detectron2's ``TracingAdapter`` around :func:`raw_inference` for ``sample``.

    Raises:
        ValueError: the model does not predict masks (nothing to export here).
    """
    if not getattr(model, "roi_heads", None) or not getattr(model.roi_heads, "mask_on", False):
        raise ValueError("only Mask R-CNN models (MODEL.MASK_ON True) can be exported")
    return TracingAdapter(model.eval(), sample, raw_inference)


def export_torchscript(
    model: GeneralizedRCNN,
    sample: torch.Tensor,
    path: str | os.PathLike,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Trace the model on ``sample`` and save it with ``torch.jit.save``.

    Tracing records the operations run for ``sample``; detectron2's R-CNN code avoids
    size-dependent Python branches while tracing, so the file accepts other image sizes (checked
    in the tests on an input size not used here).

    Args:
        model: the model in eval mode, on CPU.
        sample: one network input (see :func:`raw_inference`).
        path: where to write the ``.ts`` file.
        extra_files: name -> text stored inside the file (``torch.jit.load(_extra_files=...)``).
    """
    adapter = tracing_adapter(model, sample)
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(adapter, (sample,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files=extra_files or {})


def export_onnx(
    model: GeneralizedRCNN,
    sample: torch.Tensor,
    path: str | os.PathLike,
    *,
    opset: int,
    input_name: str,
    output_names: Sequence[str],
    metadata_props: dict[str, str] | None = None,
) -> None:
    """Export the model to ONNX through TorchScript tracing, with dynamic height and width.

    Args:
        model: the model in eval mode, on CPU.
        sample: one network input (see :func:`raw_inference`).
        path: where to write the ``.onnx`` file.
        opset: ONNX opset, at least :data:`MIN_ONNX_OPSET`.
        input_name: name of the image input.
        output_names: names of the four outputs, in :func:`raw_inference`'s order.
        metadata_props: key -> text stored in the model's metadata (ONNX Runtime reads it with
            ``session.get_modelmeta().custom_metadata_map``).

    Raises:
        ValueError: ``opset`` is below :data:`MIN_ONNX_OPSET`.
    """
    import onnx

    if opset < MIN_ONNX_OPSET:
        raise ValueError(
            f"ONNX opset {opset} exports aligned ROIAlign wrongly (outputs differ from the "
            f"model); use {MIN_ONNX_OPSET} or above (default {ONNX_OPSET})"
        )
    adapter = tracing_adapter(model, sample)
    dynamic = {input_name: {1: "height", 2: "width"}}
    dynamic.update({name: {0: "detections"} for name in output_names})
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), _quiet_tracer():
            torch.onnx.export(
                adapter,
                (sample,),
                buffer,
                dynamo=False,  # the TorchScript-based exporter: detectron2 code is traceable
                opset_version=opset,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes=dynamic,
            )
    finally:
        model.eval()  # the exporter leaves modules in training mode
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata_props or {}).items():
        onnx.helper.set_model_props(proto, {**_props(proto), key: value})
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence tracer warnings for the duration of an export.

    NOTE: detectron2's R-CNN code triggers a dozen ``TracerWarning``s (Python bools and loops
    over tensors) on paths that do not depend on the input; the exported files are checked
    against the eager model in the tests, and ``export_model_folder`` compares them again on an
    image of another size at every export.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _props(proto: object) -> dict[str, str]:
    return {entry.key: entry.value for entry in proto.metadata_props}  # type: ignore[attr-defined]
