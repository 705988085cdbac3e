"""From a folder of test images to a COCO results list: the body of ``tools/predict.py``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from detectron2.config import CfgNode
from tqdm import tqdm

from ..config import load_cellseg_config
from ..data.io import read_image
from ..engine.trainer import adapt_config_to_machine
from .predictor import CellPredictor, detections_to_results

__all__ = ["build_predict_config", "iter_batches", "predict_folder"]

logger = logging.getLogger(__name__)


def build_predict_config(
    config_file: str,
    opts: Sequence[str] = (),
    score_thresh: float | None = None,
    mask_thresh: float | None = None,
) -> CfgNode:
    """The frozen config for prediction: file, ``KEY VALUE`` overrides, then the threshold
    flags (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, ``MODEL.CELLSEG.MASK_THRESHOLD``), adapted to
    this machine (CPU without CUDA)."""
    cfg = load_cellseg_config(config_file, opts)
    if score_thresh is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    if mask_thresh is not None:
        cfg.MODEL.CELLSEG.MASK_THRESHOLD = mask_thresh
    cfg = adapt_config_to_machine(cfg)
    cfg.freeze()
    return cfg


def iter_batches(
    paths: Sequence[Path], batch_size: int
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Yield ``(indices, images)`` batches, reading the next batch while the caller works.

    TIFF decoding (LZW) runs in a background thread and releases the GIL, so it overlaps model
    inference instead of adding to it. Only two batches are ever in memory.
    """

    def load(start: int) -> tuple[list[int], list[np.ndarray]]:
        indices = list(range(start, min(start + batch_size, len(paths))))
        return indices, [read_image(paths[i]) for i in indices]

    starts = list(range(0, len(paths), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, starts[0])
        for next_start in [*starts[1:], None]:
            batch = pending.result()
            if next_start is not None:
                pending = pool.submit(load, next_start)
            yield batch


def predict_folder(
    predictor: CellPredictor,
    input_dir: str | os.PathLike,
    entries: Sequence[dict],
    progress: bool = True,
) -> list[dict]:
    """Predict every image of an id map and return the COCO results list.

    Args:
        predictor: the model wrapper.
        input_dir: folder holding the ``file_name`` of every entry.
        entries: checked id-map entries (``file_name``, ``id``, ``height``, ``width``).
        progress: show a progress bar with images/s and ETA.

    Returns:
        Results with ``image_id`` from the map; images without detections add nothing.
    """
    paths = [Path(input_dir) / entry["file_name"] for entry in entries]
    results: list[dict] = []
    bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="predict")
    for indices, images in iter_batches(paths, predictor.batch_size):
        for index, detections in zip(indices, predictor(images)):
            entry = entries[index]
            results.extend(
                detections_to_results(detections, entry["id"], entry["height"], entry["width"])
            )
        bar.update(len(indices))
    bar.close()
    predictor.warn_detection_cap(len(paths))
    logger.info("%d detections on %d images", len(results), len(paths))
    return results
