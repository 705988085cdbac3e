"""Training-side figures: conversion cold and cached, loader throughput, and seconds per
iteration of ``CellTrainer`` against detectron2's stock ``DefaultTrainer``.

The trainer comparison runs both trainers on the same config and data, alternately (A B A B ...)
after a warm-up, so drift in machine load hits both equally. Peak memory is the main process's
resident high-water mark, reset before the phase; data-loader workers are not included.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.utils.events import EventStorage

from cellseg_d2.benchmark.machine import cuda_sync, reset_peak_rss, rss_mib
from cellseg_d2.data.dataset_dicts import load_cell_train_dicts
from cellseg_d2.data.mapper import CellDatasetMapper
from cellseg_d2.engine.trainer import CellTrainer
from cellseg_d2.utils.layout import TRAIN_DIR

__all__ = [
    "StockTrainer",
    "loader_images_per_second",
    "step_timer",
    "time_conversion",
    "time_training",
]


def time_conversion(data_root: Path) -> dict[str, float]:
    """Seconds to convert the training set cold (copy without cache) and to load it cached.

    The copy keeps the dataset's own cache untouched.
    """
    with tempfile.TemporaryDirectory(prefix="cellseg_bench_") as tmp:
        copy = Path(tmp) / "data"
        shutil.copytree(data_root / TRAIN_DIR, copy / TRAIN_DIR)
        start = time.perf_counter()
        dicts = load_cell_train_dicts(copy)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        load_cell_train_dicts(copy)
        cached = time.perf_counter() - start
    return {"images": len(dicts), "cold_s": cold, "cached_s": cached}


def loader_images_per_second(cfg: CfgNode, batches: int) -> float:
    """Images per second the training loader delivers, after two warm-up batches."""
    loader = iter(build_detection_train_loader(cfg, mapper=CellDatasetMapper(cfg, is_train=True)))
    for _ in range(2):
        next(loader)
    start = time.perf_counter()
    images = sum(len(next(loader)) for _ in range(batches))
    return images / (time.perf_counter() - start)


class StockTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer, unchanged: stock DatasetMapper, SGD, default hooks."""


def step_timer(trainer: DefaultTrainer, storage: EventStorage) -> Callable[[], float]:
    """A function running one training step of ``trainer`` and returning its seconds.

    Why ``trainer.run_step()``: it is the public step of detectron2's ``TrainerBase`` (what
    ``train()`` calls once per iteration, without the hooks), so the step timed is the one
    training runs; the losses go to ``storage``, the event storage open around the timing.
    """
    trainer.storage = storage

    def step() -> float:
        cuda_sync()
        start = time.perf_counter()
        trainer.run_step()
        cuda_sync()
        storage.step()
        return time.perf_counter() - start

    return step


def time_training(cfg: CfgNode, iters: int) -> dict[str, float]:
    """Median seconds per iteration of CellTrainer and the stock trainer, run alternately, and
    the peak RSS of training (with ``images_per_s`` and peak GPU memory on CUDA)."""
    reset_peak_rss()
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ours = CellTrainer(cfg)
    stock_cfg = cfg.clone()
    if stock_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model":
        # detectron2 knows only per-parameter clipping; "norm" is its nearest equivalent.
        stock_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    stock = StockTrainer(stock_cfg)
    times: dict[str, list[float]] = {"cellseg": [], "detectron2": []}
    with EventStorage(0) as storage:
        steps = {"cellseg": step_timer(ours, storage), "detectron2": step_timer(stock, storage)}
        for step in steps.values():  # warm-up: allocator, loader workers, first batch
            step()
        for _ in range(iters):
            for name, step in steps.items():
                times[name].append(step())
    medians = {name: statistics.median(values) for name, values in times.items()}
    peak = rss_mib()
    gpu = {}
    if cuda:  # both trainers' models are resident: the peak is an upper bound for one
        gpu["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        gpu["images_per_s"] = cfg.SOLVER.IMS_PER_BATCH / medians["cellseg"]
    # Free both trainers now: their data-loader workers would otherwise keep prefetching and
    # take CPU from the inference measurements that follow.
    del steps, ours, stock
    gc.collect()
    return {
        "cellseg_s_per_iter": medians["cellseg"],
        "detectron2_s_per_iter": medians["detectron2"],
        "ratio": medians["cellseg"] / medians["detectron2"],
        "peak_rss_mib": peak,
        **gpu,
    }
