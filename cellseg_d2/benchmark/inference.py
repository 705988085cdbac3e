"""Prediction-side figures: the network alone, the model's own call and end-to-end prediction
per image, FLOPs, memory, and the CUDA summary against the device's matmul peaks.

On CUDA every timed region ends with ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.utils.analysis import FlopCountAnalysis

from cellseg_d2.benchmark.machine import cuda_sync, reset_peak_rss, rss_mib
from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.data.io import read_image
from cellseg_d2.evaluation.submission import write_submission
from cellseg_d2.inference.predict import predict_folder
from cellseg_d2.inference.predictor import CellPredictor
from cellseg_d2.utils.layout import ID_MAP_NAME, TEST_DIR

__all__ = ["gpu_figures", "inference_figures"]


def _timed_rounds(
    predictor: CellPredictor, inputs: list[dict], image_dir: Path, entries: list[dict], rounds: int
) -> dict[str, list]:
    """Alternate the three kinds of pass ``rounds`` times; the seconds per image of each round.

    Returns:
        ``model``, ``forward`` and ``end_to_end`` (seconds per image, one per round) and
        ``per_image`` (the network's seconds of each input, one list per round).
    """
    model = predictor.model
    figures: dict[str, list] = {"model": [], "forward": [], "end_to_end": [], "per_image": []}
    with tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():
            model.inference(inputs[:1], do_postprocess=False)  # warm-up
        for _ in range(rounds):
            times = []
            with torch.no_grad():
                for item in inputs:
                    start = time.perf_counter()
                    model.inference([item], do_postprocess=False)
                    cuda_sync()
                    times.append(time.perf_counter() - start)
            figures["per_image"].append(times)
            figures["model"].append(sum(times) / len(times))
            start = time.perf_counter()
            with torch.no_grad():
                for item in inputs:  # the model's own call, with detectron2's mask paste
                    model([item])
                cuda_sync()
            figures["forward"].append((time.perf_counter() - start) / len(inputs))
            start = time.perf_counter()
            results = predict_folder(predictor, image_dir, entries, progress=False)
            write_submission(results, os.path.join(tmp, "results.json"), zip_output=False)
            figures["end_to_end"].append((time.perf_counter() - start) / len(entries))
    return figures


def _flops(model: torch.nn.Module, inputs: list[dict]) -> list[float]:
    """FLOPs of one inference call per input (fvcore's count, unsupported ops left out)."""
    flops = []
    with torch.no_grad():
        for item in inputs:
            analysis = FlopCountAnalysis(model, [item])
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            flops.append(float(analysis.total()))
    return flops


def inference_figures(
    cfg: CfgNode, data_root: Path, max_images: int, rounds: int = 3
) -> dict[str, float]:
    """Model-only and end-to-end prediction seconds per image, FLOPs and memory.

    Three kinds of pass alternate for ``rounds`` rounds and the median round counts, so a
    passing disturbance of the machine does not land on one side only: the network alone
    (pre-read, pre-resized inputs, no postprocessing: ``model_s_per_image``), the model's own
    call as a user would make it (``model([...])``, which includes detectron2's full-size mask
    paste: ``model_forward_s_per_image``), and end-to-end prediction (read, infer, paste, RLE,
    write: ``predict_s_per_image``).
    """
    entries = sorted(load_id_map(data_root / ID_MAP_NAME), key=lambda e: e["id"])
    entries = entries[:max_images]
    image_dir = data_root / TEST_DIR
    reset_peak_rss()
    if cfg.MODEL.DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    predictor = CellPredictor(cfg)
    inputs = [predictor.model_input(read_image(image_dir / e["file_name"])) for e in entries]
    rounds_s = _timed_rounds(predictor, inputs, image_dir, entries, rounds)
    rss_once = rss_mib("VmRSS")
    for _ in range(2):  # memory must not grow with the number of images predicted
        predict_folder(predictor, image_dir, entries, progress=False)
    rss_growth = rss_mib("VmRSS") - rss_once
    counted = inputs[: min(3, len(inputs))]
    flops = _flops(predictor.model, counted)
    per_image = rounds_s["per_image"]
    counted_s = sum(statistics.median(r[i] for r in per_image) for i in range(len(counted)))
    model_s = statistics.median(rounds_s["model"])
    forward_s = statistics.median(rounds_s["forward"])
    end_to_end_s = statistics.median(rounds_s["end_to_end"])
    gpu = {}
    if cfg.MODEL.DEVICE.startswith("cuda"):
        gpu["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return {
        **gpu,
        "images": len(entries),
        "model_s_per_image": model_s,
        "model_forward_s_per_image": forward_s,
        "predict_s_per_image": end_to_end_s,
        "ratio": end_to_end_s / model_s,
        "ratio_to_model_forward": end_to_end_s / forward_s,
        "gflops_per_image": sum(flops) / len(flops) / 1e9,
        "achieved_gflops_per_s": sum(flops) / 1e9 / counted_s,
        "peak_rss_mib": rss_mib(),
        "rss_growth_over_2_more_passes_mib": rss_growth,
    }


def gpu_figures(
    cfg: CfgNode, report: dict[str, Any], fp32_peak: float, bf16_peak: float
) -> dict[str, Any]:
    """The CUDA summary: throughput, peak memory and utilisation against the device's peaks.

    Training FLOPs are counted as 3x the forward FLOPs per image (forward + backward, the usual
    approximation; RPN/RoI sampling makes the training forward differ slightly from inference).
    """
    training, inference = report["training"], report["inference"]
    train_gflops = 3 * inference["gflops_per_image"] * training["images_per_s"]
    return {
        "name": torch.cuda.get_device_name(cfg.MODEL.DEVICE),
        "training_images_per_s_amp": training["images_per_s"],
        "training_peak_gpu_memory_mib": training["peak_gpu_memory_mib"],
        "predict_images_per_s": 1.0 / inference["predict_s_per_image"],
        "predict_peak_gpu_memory_mib": inference["peak_gpu_memory_mib"],
        "fp32_matmul_peak_gflops_per_s": fp32_peak,
        "bf16_matmul_peak_gflops_per_s": bf16_peak,
        "inference_fraction_of_fp32_peak": inference["achieved_gflops_per_s"] / fp32_peak,
        "training_fraction_of_bf16_peak": train_gflops / bf16_peak,
        "training_fraction_of_fp32_peak": train_gflops / fp32_peak,
    }
