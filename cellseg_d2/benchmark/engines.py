"""Eager vs TorchScript vs ONNX Runtime: the whole predict call timed on one image.

Why here (not in the tool): ``tools/benchmark.py --engines`` and its test call the same
function; the figures in the README come from it. The model (``MODEL.WEIGHTS``, or a random
initialisation when empty) is exported to both formats in a temporary folder; one synthetic
square image then goes through :class:`~cellseg_d2.inference.predictor.CellPredictor` and
through :class:`~cellseg_d2.inference.exported.ExportedPredictor` for each format: one warm-up
call, then ``repeats`` timed calls each, in turns (eager, TorchScript, ONNX, eager, ...) so that
load from other processes spreads over all three.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode

from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.inference.exported import ExportedPredictor
from cellseg_d2.inference.model_export import export_model_folder, load_model_for_export
from cellseg_d2.inference.predictor import CellPredictor

__all__ = ["ENGINES", "format_engines", "time_engines"]

#: The engines compared, in the order they are timed.
ENGINES = ("eager", "torchscript", "onnx")


def time_engines(
    cfg: CfgNode, size: int = 512, repeats: int = 5, threads: int | None = None
) -> dict[str, Any]:
    """Seconds per image of each engine on one ``size`` x ``size`` synthetic image.

    Args:
        cfg: a finished config on CPU.
        size: the image side in pixels.
        repeats: timed calls per engine (after one warm-up call each).
        threads: torch and ONNX Runtime threads (default: torch's current count).

    Returns:
        ``{"size", "threads", "engines": {name: {"median_s", "min_s", "detections"}}}``.
    """
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with torch.random.fork_rng():  # a seeded model without moving the caller's RNG
        torch.manual_seed(0)
        model = load_model_for_export(cfg)
    rgb, _ = synthesize_image(np.random.default_rng(0), size, size)
    image = np.ascontiguousarray(rgb[:, :, 2::-1])
    eager = CellPredictor(cfg)
    eager.model.load_state_dict(model.state_dict())
    engines: dict[str, Any] = {"eager": eager}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ENGINES[1:]:
            folder = export_model_folder(cfg, model, fmt, Path(tmp) / fmt)
            engines[fmt] = ExportedPredictor(folder, num_threads=threads)
        counts = {name: len(engine([image])[0]) for name, engine in engines.items()}
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(repeats):
            for name, engine in engines.items():
                start = time.perf_counter()
                engine([image])
                times[name].append(time.perf_counter() - start)
    return {
        "size": size,
        "threads": threads,
        "engines": {
            name: {
                "median_s": statistics.median(values),
                "min_s": min(values),
                "detections": counts[name],
            }
            for name, values in times.items()
        },
    }


def format_engines(report: dict[str, Any]) -> str:
    """The engines report as a small table (median and min seconds per image, detections)."""
    lines = [
        f"{report['size']}x{report['size']} image, {report['threads']} thread(s)",
        f"{'engine':<12} {'median s/img':>12} {'min s/img':>10} {'detections':>10}",
    ]
    for name, row in report["engines"].items():
        lines.append(
            f"{name:<12} {row['median_s']:>12.3f} {row['min_s']:>10.3f} {row['detections']:>10}"
        )
    return "\n".join(lines)
