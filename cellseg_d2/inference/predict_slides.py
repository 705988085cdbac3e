"""Whole slides from a prediction run: the settings a config gives :func:`predict_slide`.

Why apart from :mod:`~cellseg_d2.inference.slide_predict`: that module knows tiles, stores
and writers but no config; this one is what ``tools/predict.py`` calls for the slides of its
``--input``, reading tile size, overlap, loader workers and the model's pixel size from the
finished config, so every slide of a run is predicted the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from cellseg_d2.config.scale import input_scale, model_pixel_size
from cellseg_d2.data.slide import open_slide
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference import slide_cells, slide_loader
from cellseg_d2.inference.slide_cells import auto_cell_workers
from cellseg_d2.inference.slide_predict import (
    Predictor,
    SlideSummary,
    TissueOption,
    predict_slide,
)
from cellseg_d2.inference.slide_writers import DEFAULT_SLIDE_FORMATS, SLIDE_FORMATS
from cellseg_d2.utils.files import sha256_file
from cellseg_d2.utils.processes import start_worker_server

__all__ = [
    "check_slide_formats",
    "model_identity",
    "predict_slides",
    "slide_cell_workers",
    "slide_tile_factor",
    "slide_plan_options",
    "start_slide_worker_server",
]

logger = logging.getLogger(__name__)


def check_slide_formats(formats: Sequence[str], slides: Sequence[Path]) -> list[str]:
    """The formats written for whole slides; refuse what a slide cannot give.

    Why: a COCO submission of a 50,000 px slide is not what anyone opens; slides are written as
    QuPath GeoJSON, the per-cell table and, only where ``labels`` is asked, a tiled label
    pyramid (``<stem>.labels.ome.tif``) instead of the images' whole-canvas label files.

    Raises:
        CellDataError: slides among the inputs but no slide format asked, naming the first.
    """
    chosen = [name for name in formats if name in SLIDE_FORMATS]
    if slides and not chosen:
        raise CellDataError(
            f"{slides[0]}: whole slides are written as {', '.join(SLIDE_FORMATS)} "
            f"(--format {','.join(DEFAULT_SLIDE_FORMATS)} --output-dir DIR); {', '.join(formats)} "
            "is for images read whole"
        )
    return chosen


def model_identity(cfg: CfgNode) -> str:
    """What identifies the model in a slide store, so ``--resume`` never continues a slide
    with other weights: the SHA-256 of a local weights file, else its name."""
    weights = cfg.MODEL.WEIGHTS
    return sha256_file(weights) if weights and os.path.isfile(weights) else str(weights)


def slide_plan_options(
    cfg: CfgNode, pixel_size: float | None, tissue: TissueOption
) -> dict[str, Any]:
    """:func:`~cellseg_d2.inference.slide_plan.plan_slide`'s keyword arguments from the config.

    Why one place: one process and several (:mod:`~cellseg_d2.inference.slide_ranks`) must plan
    a slide identically, or their stores would differ (and a resume would be refused).
    """
    return {
        "model_pixel_size": model_pixel_size(cfg) or None,
        "pixel_size_override": pixel_size,
        "tile_size": int(cfg.TEST.TILING.TILE_SIZE),
        "overlap": int(cfg.TEST.TILING.OVERLAP),
        "tissue": tissue,
        "model_id": model_identity(cfg),
    }


def slide_tile_factor(cfg: CfgNode) -> float:
    """The one resize factor of every slide tile in the predictor: 1 when slides are read at
    the model's pixel size (it includes ``INPUT.SCALE``), else ``INPUT.SCALE`` (or 1 when off):
    never the short-edge resize, which would scale each tile by its own size."""
    return 1.0 if model_pixel_size(cfg) else (input_scale(cfg) or 1.0)


def slide_cell_workers(cfg: CfgNode) -> int:
    """``TEST.SLIDE_CELL_WORKERS``, with ``-1`` resolved for the config's device."""
    cell_workers = int(cfg.TEST.SLIDE_CELL_WORKERS)
    if cell_workers < 0:
        cell_workers = auto_cell_workers(cfg.MODEL.DEVICE, int(cfg.DATALOADER.NUM_WORKERS))
    return cell_workers


def start_slide_worker_server(cfg: CfgNode) -> None:
    """Start the fork server of the slides' reading and cell workers now, when the config uses
    any (``DATALOADER.NUM_WORKERS``, :func:`slide_cell_workers`).

    Why: called before the model is built, the server's import of torch overlaps the build
    instead of delaying the first tile; a run without workers starts no server.
    """
    if int(cfg.DATALOADER.NUM_WORKERS) > 0 or slide_cell_workers(cfg) > 0:
        start_worker_server([slide_loader.__name__, slide_cells.__name__])


def predict_slides(
    cfg: CfgNode,
    predictor: Predictor,
    slides: Sequence[Path],
    output_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = DEFAULT_SLIDE_FORMATS,
    pixel_size: float | None = None,
    tissue: TissueOption = "auto",
    resume: bool = False,
    progress: bool = True,
) -> list[SlideSummary]:
    """Predict every slide into ``output_dir`` (``<stem>.cells.sqlite``, ``<stem>.geojson``,
    ``<stem>.cells.csv``, with ``labels`` ``<stem>.labels.ome.tif``) at the model's pixel size
    (``INPUT.PIXEL_SIZE / INPUT.SCALE``, see :func:`~cellseg_d2.config.scale.model_pixel_size`;
    0 = as scanned).

    Args:
        cfg: the finished prediction config.
        predictor: BGR tiles -> detections (the run's :class:`CellPredictor`).
        slides: the slide files, in order.
        output_dir: the export folder (claimed by the caller).
        formats: slide formats (:data:`~cellseg_d2.inference.slide_writers.SLIDE_FORMATS`).
        pixel_size: µm/px of every slide instead of its metadata (``--pixel-size``).
        tissue: ``"auto"`` (Otsu on a thumbnail), ``"none"`` or a mask image path.
        resume: continue each slide from its last finished chunk.
        progress: a progress bar per slide.

    Raises:
        CellDataError: an unreadable slide or a missing/implausible pixel size (named).
    """
    summaries = []
    options = slide_plan_options(cfg, pixel_size, tissue)
    # Slides with a known model pixel size are read at INPUT.PIXEL_SIZE / INPUT.SCALE straight
    # from their pyramid: the predictor takes their tiles as they are. Without one they are read
    # as scanned and resized by INPUT.SCALE alone (never by the short-edge resize, which would
    # scale each tile by its own size).
    at_model_scale = getattr(predictor, "inputs_at_model_scale", None)
    factor = slide_tile_factor(cfg)
    cell_workers = slide_cell_workers(cfg)
    with at_model_scale(factor) if at_model_scale else contextlib.nullcontext():
        for slide in slides:
            summaries.append(
                predict_slide(
                    slide,
                    open_slide,
                    predictor,
                    output_dir,
                    batch_size=int(getattr(predictor, "batch_size", 1)),
                    num_workers=int(cfg.DATALOADER.NUM_WORKERS),
                    resume=resume,
                    class_names=tuple(cfg.DATASETS.CLASS_NAMES),
                    formats=formats,
                    progress=progress,
                    cell_workers=cell_workers,
                    **options,
                )
            )
    return summaries
