"""Write an exported model folder: the traced network plus ``metadata.json``.

The folder is what :class:`cellseg_d2.inference.exported.ExportedPredictor` reads (see that
module for the layout). It is written into a hidden temporary folder beside the output and
renamed at the end, so an interrupted export never leaves a half-written model folder behind,
and an existing folder is replaced only when asked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from cellseg_d2 import __version__
from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer
from cellseg_d2.config.scale import input_scale
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.errors import ConfigError
from cellseg_d2.inference.exported import (
    EMBEDDED_KEY,
    FORMAT_VERSION,
    INPUT_NAME,
    METADATA_FILE,
    MODEL_FILES,
    OUTPUT_NAMES,
    ExportedModelError,
    ExportedPredictor,
    resize_image,
    resized_shape,
)
from cellseg_d2.modeling.export import (
    MIN_ONNX_OPSET,
    ONNX_OPSET,
    export_onnx,
    export_torchscript,
    raw_inference,
)
from cellseg_d2.utils.files import sha256_file
from cellseg_d2.utils.layout import class_colors

__all__ = [
    "build_metadata",
    "check_export_target",
    "compare_with_eager",
    "export_model_folder",
    "load_model_for_export",
    "sample_input",
]

logger = logging.getLogger(__name__)

#: Largest differences between exported and eager outputs that count as equal.
TOLERANCES = {"boxes": 1e-3, "classes": 0.0, "scores": 1e-4, "mask_probs": 1e-4}


def load_model_for_export(cfg: CfgNode) -> torch.nn.Module:
    """Build the model on CPU in eval mode and load ``MODEL.WEIGHTS`` as prediction does.

    Raises:
        WeightsUnavailableError: the weights cannot be read or are refused.
        ConfigError: ``INPUT.SCALE`` is on: the exported folder's reader resizes by
            ``min_size``/``max_size`` only and would predict at the wrong scale.
    """
    if input_scale(cfg) > 0:
        raise ConfigError(
            f"INPUT.SCALE {cfg.INPUT.SCALE}: exported models resize by INPUT.MIN_SIZE_TEST/"
            "MAX_SIZE_TEST only, so a model trained at a scale cannot be exported yet"
        )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        trust = cfg.MODEL.CELLSEG.TRUST_PICKLE
        AtomicDetectionCheckpointer(model, trust_pickle=trust).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialised model")
    return model


def sample_input(cfg: CfgNode, image: np.ndarray | None = None) -> torch.Tensor:
    """The network input to trace with: ``image`` (HxWx3 BGR) or a synthetic cell image, resized
    as at test time and in the model's channel order, as float32 3 x H x W.

    Why a cell image and not zeros: tracing follows the path one input takes, and an input with
    detections takes the mask head's path the way real images do.
    """
    if image is None:
        side = int(cfg.INPUT.MIN_SIZE_TEST)
        rgb, _ = synthesize_image(np.random.default_rng(0), side, side + side // 4)
        image = np.ascontiguousarray(rgb[:, :, 2::-1])  # RGB(A) -> BGR
    if cfg.INPUT.FORMAT == "RGB":
        image = image[:, :, ::-1]
    height, width = resized_shape(
        *image.shape[:2], int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
    )
    resized = resize_image(image, height, width)
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()


def build_metadata(
    cfg: CfgNode, fmt: str, model_sha256: str, opset: int | None, colors: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """The ``metadata.json`` of an export of ``cfg``'s model (see ``exported``'s docstring).

    Args:
        cfg: the config the model was built from.
        fmt: ``"torchscript"`` or ``"onnx"``.
        model_sha256: sha256 of the written model file (a reader checks it).
        opset: the ONNX opset, None for TorchScript.
        colors: one RGB colour per class (the project's palette).
    """
    pixel_size = cfg.INPUT.get("PIXEL_SIZE", None)
    tiling = cfg.TEST.TILING
    return {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "model_sha256": model_sha256,
        "opset": opset,
        "class_names": list(cfg.DATASETS.CLASS_NAMES),
        "class_colors": [list(map(int, color)) for color in colors],
        "pixel_size": float(pixel_size) if pixel_size else None,
        "input": {
            "name": INPUT_NAME,
            "format": cfg.INPUT.FORMAT,
            "layout": "CHW",
            "dtype": "float32",
            "value_range": [0, 255],
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "normalized_in_graph": True,
            "min_size": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size": int(cfg.INPUT.MAX_SIZE_TEST),
            "resize": "bilinear (PIL for uint8), short side to min_size, long side <= max_size",
        },
        "outputs": list(OUTPUT_NAMES),
        "score_threshold": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
        "nms_threshold": float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
        "mask_threshold": float(cfg.MODEL.CELLSEG.MASK_THRESHOLD),
        "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        "tiling": {
            "max_size": int(tiling.MAX_SIZE),
            "tile_size": int(tiling.TILE_SIZE),
            "overlap": int(tiling.OVERLAP),
        },
        "exported_with": {"cellseg_d2": __version__, "torch": torch.__version__},
        "config": cfg.dump(),
    }


def check_export_target(
    fmt: str, output: str | os.PathLike, opset: int | None, overwrite: bool
) -> int | None:
    """Check an export request before any work: the format, the opset and the output folder.

    Returns:
        The ONNX opset to use (None for TorchScript).

    Raises:
        ExportedModelError: unknown format, an opset below
            :data:`~cellseg_d2.modeling.export.MIN_ONNX_OPSET`, or ``output`` exists (without
            ``overwrite``), is not a folder, or holds files an export does not write (so that
            ``overwrite`` never deletes anything else).
    """
    if fmt not in MODEL_FILES:
        raise ExportedModelError(f"unknown export format {fmt!r}; choose from {list(MODEL_FILES)}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ExportedModelError(f"{output}: already exists; pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise ExportedModelError(f"{output}: exists and is not a folder")
    if output.exists():
        ours = {METADATA_FILE, *MODEL_FILES.values()}
        others = sorted(entry.name for entry in output.iterdir() if entry.name not in ours)
        if others:
            raise ExportedModelError(
                f"{output}: not an exported model folder (it holds {', '.join(others[:3])}); "
                "--overwrite replaces only a folder this tool wrote"
            )
    opset = (opset or ONNX_OPSET) if fmt == "onnx" else None
    if opset is not None and opset < MIN_ONNX_OPSET:
        raise ExportedModelError(
            f"--opset {opset}: ONNX opsets below {MIN_ONNX_OPSET} export aligned ROIAlign "
            f"wrongly (outputs differ from the model); use {MIN_ONNX_OPSET} or above "
            f"(default {ONNX_OPSET})"
        )
    return opset


def _write_model_file(
    model: torch.nn.Module,
    sample: torch.Tensor,
    fmt: str,
    path: Path,
    opset: int | None,
    embedded: str,
) -> None:
    """Trace ``model`` on ``sample`` into ``path`` as ``fmt``, with the ``embedded`` facts stored
    inside the file (TorchScript extra file, ONNX metadata property)."""
    if fmt == "torchscript":
        export_torchscript(model, sample, path, extra_files={EMBEDDED_KEY: embedded})
    else:
        export_onnx(
            model,
            sample,
            path,
            opset=int(opset),
            input_name=INPUT_NAME,
            output_names=OUTPUT_NAMES,
            metadata_props={EMBEDDED_KEY: embedded},
        )


def export_model_folder(
    cfg: CfgNode,
    model: torch.nn.Module,
    fmt: str,
    output: str | os.PathLike,
    *,
    opset: int | None = None,
    overwrite: bool = False,
    sample: torch.Tensor | None = None,
) -> Path:
    """Export ``model`` (built from ``cfg``) as ``fmt`` into the folder ``output``.

    Args:
        cfg: the model's config (class names, thresholds, resize, input format).
        model: the model on CPU in eval mode, weights loaded.
        fmt: ``"torchscript"`` or ``"onnx"``.
        output: the folder to create.
        opset: ONNX opset (default :data:`~cellseg_d2.modeling.export.ONNX_OPSET`).
        overwrite: replace an existing ``output``.
        sample: network input to trace with (default :func:`sample_input`).

    Returns:
        The folder.

    Raises:
        ExportedModelError: unknown format, an opset too low, or ``output`` exists (without
            ``overwrite``) or is not a folder.
    """
    # One piece: the temporary folder, its swap into place and its cleanup belong together.
    output = Path(output)
    opset = check_export_target(fmt, output, opset, overwrite)
    sample = sample_input(cfg) if sample is None else sample
    num_classes = int(model.roi_heads.num_classes)
    if num_classes != len(cfg.DATASETS.CLASS_NAMES):
        raise ExportedModelError(
            f"the model predicts {num_classes} classes but DATASETS.CLASS_NAMES lists "
            f"{len(cfg.DATASETS.CLASS_NAMES)}; set both to the same number of classes"
        )
    embedded = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "num_classes": num_classes,
            "input_format": cfg.INPUT.FORMAT,
        }
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        model_path = work / MODEL_FILES[fmt]
        _write_model_file(model, sample, fmt, model_path, opset, embedded)
        meta = build_metadata(cfg, fmt, sha256_file(model_path), opset, class_colors(num_classes))
        (work / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        work.chmod(0o777 & ~_umask())
        old = None
        if output.exists():  # move the old export aside, then swap the new one in
            old = Path(
                tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent)
            )
            os.replace(output, old / output.name)
        os.replace(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("Exported %s model (%d classes) to %s", fmt, num_classes, output)
    return output


def compare_with_eager(
    cfg: CfgNode, model: torch.nn.Module, folder: str | os.PathLike
) -> dict[str, float]:
    """Run the eager model and the exported folder on one synthetic image of a size the export
    did not trace with, and return how far apart their raw outputs are.

    Why: an export is only useful if it computes what the model computes; this catches a graph
    that does not generalise to other sizes or an operator exported wrongly, at export time.
    Outputs are compared in order (both run the same NMS), so a tie broken differently shows
    as a large difference; the tests match detections as sets instead.

    Returns:
        ``eager_detections``, ``exported_detections``, when those agree the largest absolute
        differences ``boxes`` (px), ``classes``, ``scores`` and ``mask_probs``, and ``equal``:
        1.0 when all are within :data:`TOLERANCES`, else 0.0.
    """
    side = int(cfg.INPUT.MIN_SIZE_TEST)
    rgb, _ = synthesize_image(np.random.default_rng(1), side + side // 3, side - side // 8)
    sample = sample_input(cfg, np.ascontiguousarray(rgb[:, :, 2::-1]))
    with torch.no_grad():
        reference = raw_inference(model.eval(), sample)
    exported = ExportedPredictor(folder).runner(sample)
    report = {"eager_detections": len(reference[0]), "exported_detections": len(exported[0])}
    if len(reference[0]) == len(exported[0]):
        for name, ours, theirs in zip(
            ("boxes", "classes", "scores", "mask_probs"), exported, reference
        ):
            diff = (ours.float() - theirs.float()).abs()
            report[name] = float(diff.max()) if diff.numel() else 0.0
    within = all(report.get(name, float("inf")) <= tol for name, tol in TOLERANCES.items())
    report["equal"] = float(within)
    return report


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
