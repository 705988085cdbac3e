"""The whole benchmark (``tools/benchmark.py``): every phase in order, and the printed table.

Every figure is measured here, now, on the given config and data; nothing is estimated. On CUDA
(``MODEL.DEVICE cuda``) training runs with AMP on, and a ``gpu`` section adds training
images/s, peak GPU memory (``torch.cuda.max_memory_allocated``), end-to-end predict images/s
and utilisation against the GPU's own fp32 and bf16 matrix-multiply peaks, measured on the
device.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from cellseg_d2.benchmark.inference import gpu_figures, inference_figures
from cellseg_d2.benchmark.machine import matmul_peak_gflops
from cellseg_d2.benchmark.training import loader_images_per_second, time_conversion, time_training
from cellseg_d2.data.register import register_cell_datasets

__all__ = ["BENCHMARK_PREFIX", "format_benchmark", "registered_dataset", "run_benchmark"]

#: Prefix of the datasets the benchmark registers for its duration.
BENCHMARK_PREFIX = "cellseg_benchmark"


@contextlib.contextmanager
def registered_dataset(data_root: Path) -> Iterator[str]:
    """Register the benchmark's dataset under :data:`BENCHMARK_PREFIX` for the duration, and
    remove it from the catalogs afterwards (also on error)."""
    names = register_cell_datasets(data_root, prefix=BENCHMARK_PREFIX, val_fraction=0.1, seed=0)
    try:
        yield BENCHMARK_PREFIX
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _benchmark_config(cfg: CfgNode) -> CfgNode:
    """A clone of the finished ``cfg`` with AMP on CUDA and no weights unless a local file."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.SOLVER.AMP.ENABLED = True  # the training figure on a GPU is with AMP, as trained
    if not os.path.isfile(cfg.MODEL.WEIGHTS):  # speed needs no weights; never download them
        cfg.MODEL.WEIGHTS = ""
    return cfg


def _loader_figures(cfg: CfgNode, batches: int) -> dict[str, float]:
    """Loader images/s with elastic warps off/on and 0/2 workers."""
    loader = {}
    for elastic in (False, True):
        for workers in (0, 2):
            variant = cfg.clone()
            variant.INPUT.ELASTIC.ENABLED = elastic
            variant.DATALOADER.NUM_WORKERS = workers
            key = f"elastic_{'on' if elastic else 'off'}_workers_{workers}_images_per_s"
            loader[key] = loader_images_per_second(variant, batches)
    return loader


def run_benchmark(
    cfg: CfgNode, data_root: str | os.PathLike, iters: int = 10, loader_batches: int = 10
) -> dict[str, Any]:
    """Measure every figure of the benchmark for ``cfg`` on the dataset at ``data_root``.

    Args:
        cfg: a cellseg-d2 config. ``MODEL.WEIGHTS`` is used for the inference figures when it is
            a local file (trained weights give realistic detection counts), else ignored.
        data_root: a dataset in the cell layout with ``train/`` and ``test_release/``.
        iters: timed training iterations per trainer (after one warm-up each).
        loader_batches: timed batches per data-loader setting.

    Returns:
        A JSON-ready dict: machine, conversion, loader, training, inference, utilisation (and
        gpu on CUDA).
    """
    data_root = Path(data_root)
    cfg = _benchmark_config(cfg)
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    report: dict[str, Any] = {
        "machine": {
            "device": cfg.MODEL.DEVICE,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "conversion": time_conversion(data_root),
    }
    output_dir = tempfile.mkdtemp(prefix="cellseg_bench_out_")
    with registered_dataset(data_root) as prefix:
        cfg.DATASETS.TRAIN = (f"{prefix}_trainval",)
        cfg.DATASETS.TEST = ()
        cfg.SOLVER.MAX_ITER = 10**6  # the schedule is irrelevant to step time
        cfg.SOLVER.EPOCHS = 0
        cfg.OUTPUT_DIR = output_dir
        report["loader"] = loader = _loader_figures(cfg, loader_batches)
        report["training"] = time_training(cfg, iters)
        consumed = cfg.SOLVER.IMS_PER_BATCH / report["training"]["cellseg_s_per_iter"]
        loader["model_consumes_images_per_s"] = consumed
        report["inference"] = inference_figures(cfg, data_root, max_images=max(2, iters))
    shutil.rmtree(output_dir, ignore_errors=True)
    # The denominator is the device the model ran on: a GPU's own peak, not the host CPU's.
    gpu_peak = {"size": 8192, "repeats": 3, "device": cfg.MODEL.DEVICE, "inner": 10}
    peak = matmul_peak_gflops(**gpu_peak) if cuda else matmul_peak_gflops()
    report["utilisation"] = {
        "fp32_matmul_peak_gflops_per_s": peak,
        "inference_gflops_per_s": report["inference"]["achieved_gflops_per_s"],
        "fraction_of_peak": report["inference"]["achieved_gflops_per_s"] / peak,
    }
    if cuda:
        bf16 = matmul_peak_gflops(**gpu_peak, dtype=torch.bfloat16)
        report["gpu"] = gpu_figures(cfg, report, fp32_peak=peak, bf16_peak=bf16)
    return report


def format_benchmark(report: dict[str, Any]) -> str:
    """The report as an aligned two-column table, one section per phase."""
    lines = []
    for section, values in report.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            shown = f"{value:.4g}" if isinstance(value, float) and np.isfinite(value) else value
            lines.append(f"  {key:<42} {shown}")
    return "\n".join(lines)
