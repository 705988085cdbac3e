"""Run an exported cellseg-d2 model (TorchScript or ONNX) where detectron2 is not installed.

An exported model folder (written by ``tools/export_model.py``) holds the network and a
``metadata.json`` that says how to feed it and read it:

- ``model.ts`` (TorchScript, ``torch.jit.load``) or ``model.onnx`` (ONNX Runtime). Input: one
  float32 image, 3 x H x W, in the channel order ``input.format`` (BGR or RGB), pixel values
  0-255, already resized (see below); normalisation (``input.pixel_mean``/``pixel_std``) and
  padding happen inside the graph. Outputs, in this order: ``boxes`` (N x 4 XYXY, in pixels of
  the resized input), ``classes`` (N, int64, 0-based), ``scores`` (N) and ``mask_probs``
  (N x 1 x 28 x 28 mask probabilities per box), after score threshold, NMS and the detection
  cap of the config.
- ``metadata.json``: :data:`FORMAT_VERSION`, class names and colours, pixel size, input format
  and normalisation, the resize (``input.min_size``/``max_size``: the short side becomes
  ``min_size`` unless the long side would exceed ``max_size``), score and mask thresholds,
  tiling, the sha256 of the model file, and the config it came from.

The graph stops before the paste (it returns masks per box, not masks in the image), so
:class:`ExportedPredictor` does the rest exactly as the eager predictor does: resize like
detectron2's ``ResizeShortestEdge`` (PIL bilinear for uint8), run, rescale boxes, paste masks
(:func:`~cellseg_d2.inference.detections.raw_outputs_to_detections`), tile large images.

NOTE: nothing here imports detectron2; ``tests/inference/test_model_export.py`` runs this module
in a process where importing detectron2 fails.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cellseg_d2.errors import CellSegError
from cellseg_d2.inference.detections import (
    Detection,
    predict_in_tiles,
    raw_outputs_to_detections,
)
from cellseg_d2.utils.files import sha256_file

__all__ = [
    "EMBEDDED_KEY",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "MODEL_FILES",
    "OUTPUT_NAMES",
    "ExportedModelError",
    "ExportedPredictor",
    "read_metadata",
    "resize_image",
    "resized_shape",
]

logger = logging.getLogger(__name__)

#: Version of the exported folder's layout; a reader refuses versions it does not know.
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
#: Model file name per format.
MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "classes", "scores", "mask_probs")
#: Name of the JSON embedded in the model file itself (TorchScript extra file, ONNX metadata
#: property) with the facts that must agree with ``metadata.json``.
EMBEDDED_KEY = "cellseg_d2.json"
#: metadata.json is a few kB (the config is the largest part); anything huge is not ours.
MAX_METADATA_BYTES = 16 << 20
_REQUIRED = ("format", "model_file", "model_sha256", "class_names", "input", "score_threshold")
_REQUIRED_INPUT = ("format", "min_size", "max_size")


class ExportedModelError(CellSegError):
    """An exported model folder that cannot be used: missing or unreadable metadata, an unknown
    format version, a model file that is missing, truncated or from another export, or class
    names that do not match the model. The message names the file."""


def read_metadata(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``<model_dir>/metadata.json`` (not the model file).

    Raises:
        ExportedModelError: the folder or file is missing, not JSON, of an unknown
            ``format_version``, lacks a field, has a field of the wrong type, or its class
            names and colours disagree.
    """
    path = Path(model_dir) / METADATA_FILE
    if not Path(model_dir).is_dir():
        raise ExportedModelError(f"{model_dir}: exported model folder not found")
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise ExportedModelError(f"{path}: larger than {MAX_METADATA_BYTES} bytes")
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportedModelError(
            f"{path}: missing; an exported model folder holds {METADATA_FILE} beside the model "
            "file (write one with tools/export_model.py)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportedModelError(f"{path}: unreadable metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise ExportedModelError(f"{path}: metadata must be a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportedModelError(
            f"{path}: format_version {version!r} is not supported (this cellseg-d2 reads "
            f"{FORMAT_VERSION}); export the model again with this version"
        )
    missing = [key for key in _REQUIRED if key not in meta]
    inputs = meta.get("input")
    if not isinstance(inputs, dict):
        inputs = {}
    missing += [f"input.{k}" for k in _REQUIRED_INPUT if k not in inputs]
    if missing:
        raise ExportedModelError(f"{path}: missing field(s) {', '.join(missing)}")
    problems = []
    if meta["format"] not in MODEL_FILES:
        problems.append(f"format {meta['format']!r} is not one of {', '.join(MODEL_FILES)}")
    if inputs["format"] not in ("BGR", "RGB"):
        problems.append("input.format must be BGR or RGB")
    sizes = (inputs["min_size"], inputs["max_size"])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        problems.append("input.min_size and input.max_size must be positive integers")
    if not isinstance(meta["score_threshold"], (int, float)):
        problems.append("score_threshold must be a number")
    names, colors = meta["class_names"], meta.get("class_colors", [])
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problems.append("class_names must be a non-empty list of names")
    elif not isinstance(colors, list) or (colors and len(colors) != len(names)):
        problems.append(f"{len(names)} class_names but not one colour per class in class_colors")
    if problems:
        raise ExportedModelError(f"{path}: {'; '.join(problems)}")
    return meta


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The network input size for an image: detectron2's ``ResizeShortestEdge`` at one size.

    The short side becomes ``min_size`` unless the long side would exceed ``max_size``, in which
    case the long side becomes ``max_size``; both are rounded half up.
    """
    scale = min_size * 1.0 / min(height, width)
    new_h, new_w = (min_size * 1.0, scale * width) if height < width else (scale * height, min_size)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an HxWxC image as detectron2's ``ResizeTransform`` does (bilinear).

    uint8 images go through PIL (as in detectron2, which gives values that differ from OpenCV's
    or torch's bilinear); other dtypes through ``torch.nn.functional.interpolate``.
    """
    if image.dtype == np.uint8:
        resized = Image.fromarray(np.ascontiguousarray(image)).resize(
            (width, height), Image.BILINEAR
        )
        return np.asarray(resized)
    # Writable too: torch warns on a read-only array (a memory map, np.asarray of a PIL image).
    tensor = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(
        tensor, (height, width), mode="bilinear", align_corners=False
    )
    return out[0].permute(1, 2, 0).numpy()


def _check_model_file(model_dir: Path, meta: dict[str, Any]) -> Path:
    """The model file named by the metadata, present and with the recorded sha256."""
    path = model_dir / str(meta["model_file"])
    if path.name != str(meta["model_file"]) or not path.is_file():
        raise ExportedModelError(f"{path}: model file named in {METADATA_FILE} not found")
    if sha256_file(path) != meta["model_sha256"]:
        raise ExportedModelError(
            f"{path}: does not match {model_dir / METADATA_FILE} (sha256 differs): the file is "
            "truncated, modified or from another export; copy the whole folder again"
        )
    return path


def _check_embedded(path: Path, embedded: str | None, meta: dict[str, Any]) -> None:
    """Compare the facts stored inside the model file with ``metadata.json``."""
    if not embedded:
        raise ExportedModelError(f"{path}: holds no {EMBEDDED_KEY}; not a cellseg-d2 export")
    facts = json.loads(embedded)
    if facts.get("num_classes") != len(meta["class_names"]):
        raise ExportedModelError(
            f"{path}: the model predicts {facts.get('num_classes')} classes but "
            f"{path.parent / METADATA_FILE} names {len(meta['class_names'])}"
        )
    if facts.get("input_format") != meta["input"]["format"]:
        raise ExportedModelError(
            f"{path}: the model takes {facts.get('input_format')} input but "
            f"{path.parent / METADATA_FILE} says {meta['input']['format']}"
        )


class _TorchScriptRunner:
    """``torch.jit.load`` of a traced model; returns the four outputs as tensors."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        import torchvision  # noqa: F401  (registers the nms/roi_align ops the graph calls)

        extra = {EMBEDDED_KEY: ""}
        try:
            self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ExportedModelError(f"{path}: not a loadable TorchScript model ({exc})") from exc
        _check_embedded(path, extra[EMBEDDED_KEY], meta)
        self.module.eval()

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(self.module(image))


class _OnnxRunner:
    """An ONNX Runtime CPU session; returns the four outputs as tensors."""

    def __init__(self, path: Path, meta: dict[str, Any], num_threads: int | None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise ExportedModelError(
                f"{path}: running an ONNX model needs onnxruntime (pip install "
                "'cellseg-d2[export]' or pip install onnxruntime)"
            ) from exc
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own (non-exported) error types
            raise ExportedModelError(f"{path}: not a loadable ONNX model ({exc})") from exc
        embedded = self.session.get_modelmeta().custom_metadata_map.get(EMBEDDED_KEY)
        _check_embedded(path, embedded, meta)
        self.output_names = list(OUTPUT_NAMES)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.run(self.output_names, {INPUT_NAME: image.numpy()})
        return tuple(torch.from_numpy(np.asarray(out)) for out in outputs)


def _tiling(model_dir: Path, meta: dict[str, Any]) -> tuple[int, int, int]:
    """``(max_size, tile_size, overlap)`` of the metadata's ``tiling`` (max_size 0: no tiling)."""
    tiling = meta.get("tiling", {})
    above, size, overlap = (int(tiling.get(k, 0)) for k in ("max_size", "tile_size", "overlap"))
    if above > 0 and not 0 <= overlap < size:
        raise ExportedModelError(
            f"{model_dir / METADATA_FILE}: tiling.overlap must be at least 0 and smaller than "
            "tiling.tile_size"
        )
    return above, size, overlap


class ExportedPredictor:
    """Predict cells with an exported model folder: a drop-in for ``CellPredictor``.

    Takes and returns what :class:`~cellseg_d2.inference.predictor.CellPredictor` does (HxWx3
    uint8 BGR images in, a list of :class:`Detection` per image out), tiles large images the same
    way and counts images at the detection cap. One image per model call (the graph was traced
    for one); no test-time augmentation.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        score_thresh: float | None = None,
        mask_thresh: float | None = None,
        num_threads: int | None = None,
    ) -> None:
        """Check the folder and load its model.

        Args:
            model_dir: folder written by ``tools/export_model.py``.
            score_thresh: keep detections at least this confident. It can only raise the
                exported threshold (lower ones were removed inside the graph).
            mask_thresh: mask binarisation threshold (default: the exported one).
            num_threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice).

        Raises:
            ExportedModelError: see :func:`read_metadata`; also a missing, truncated or
                mismatched model file, or a score threshold below the exported one.
        """
        self.model_dir = Path(model_dir)
        self.metadata = meta = read_metadata(self.model_dir)
        path = _check_model_file(self.model_dir, meta)
        if meta["format"] == "onnx":
            self.runner: Any = _OnnxRunner(path, meta, num_threads)
        else:
            self.runner = _TorchScriptRunner(path, meta)
        exported_score = float(meta["score_threshold"])
        if score_thresh is not None and score_thresh < exported_score:
            raise ExportedModelError(
                f"{self.model_dir / METADATA_FILE}: score threshold {score_thresh} is below the "
                f"exported {exported_score}; export again with MODEL.ROI_HEADS.SCORE_THRESH_TEST "
                f"{score_thresh}"
            )
        self.score_threshold = exported_score if score_thresh is None else float(score_thresh)
        self.mask_threshold = float(
            meta.get("mask_threshold", 0.5) if mask_thresh is None else mask_thresh
        )
        self.class_names: list[str] = list(meta["class_names"])
        self.input_format = meta["input"]["format"]
        self.min_size, self.max_size = (
            int(meta["input"]["min_size"]),
            int(meta["input"]["max_size"]),
        )
        self.detection_cap = int(meta.get("detections_per_image", 0))
        self.images_at_detection_cap = 0
        self.batch_size = 1
        self.tile_above, self.tile_size, self.tile_overlap = _tiling(self.model_dir, meta)
        self._inputs_at_cap = 0

    def raw_outputs(self, image: np.ndarray) -> tuple[tuple[torch.Tensor, ...], tuple[int, int]]:
        """The graph's four outputs for one HxWx3 BGR image, and the network input size."""
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        new_h, new_w = resized_shape(*image.shape[:2], self.min_size, self.max_size)
        resized = resize_image(image, new_h, new_w)
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
        return self.runner(tensor), (new_h, new_w)

    def _predict_one(self, image: np.ndarray) -> list[Detection]:
        """Detections of one untiled image, above the score threshold, in image pixels."""
        (boxes, classes, scores, masks), input_size = self.raw_outputs(image)
        self._inputs_at_cap += bool(self.detection_cap) and len(scores) >= self.detection_cap
        keep = scores >= self.score_threshold
        if not bool(keep.all()):
            boxes, classes, scores, masks = boxes[keep], classes[keep], scores[keep], masks[keep]
        height, width = image.shape[:2]
        return raw_outputs_to_detections(
            boxes, classes, scores, masks, input_size, height, width, self.mask_threshold
        )

    def _predict_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """One model call per image: the graph was traced for one image."""
        return [self._predict_one(image) for image in images]

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Predict every image (HxWx3 uint8 BGR, any sizes); returns detections per image."""
        results = []
        for image in images:
            before = self._inputs_at_cap
            if self.tile_above > 0 and max(image.shape[:2]) > self.tile_above:
                tiles = (self.tile_size, self.tile_overlap, self.batch_size, self._predict_batch)
                results.append(predict_in_tiles(image, *tiles))
            else:
                results.append(self._predict_one(image))
            self.images_at_detection_cap += self._inputs_at_cap > before
        return results

    def warn_detection_cap(self, num_images: int) -> None:
        """Log one warning when any image so far reached the exported detection cap."""
        if self.images_at_detection_cap:
            logger.warning(
                "%d of %d image(s) reached the exported detection cap of %d (for tiled images: "
                "in at least one tile), so cells may be missing; export again with a larger "
                "TEST.DETECTIONS_PER_IMAGE",
                self.images_at_detection_cap,
                num_images,
                self.detection_cap,
            )
