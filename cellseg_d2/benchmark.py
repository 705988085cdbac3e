"""Reproducible speed, memory and FLOP figures on the machine it runs on (``tools/benchmark.py``).

Every figure is measured here, now, on the given config and data; nothing is estimated. The
trainer comparison runs the project's ``CellTrainer`` and detectron2's stock ``DefaultTrainer``
with its stock ``DatasetMapper`` on the same config and data, alternately (A B A B ...) after a
warm-up, so drift in machine load hits both equally. Peak memory is the main process's resident
high-water mark (``VmHWM``), reset before each phase; data-loader workers are not included.

On CUDA (``MODEL.DEVICE cuda``) every timed region ends with ``torch.cuda.synchronize()``, training
runs with AMP on, and a ``gpu`` section adds training images/s, peak GPU memory
(``torch.cuda.max_memory_allocated``), end-to-end predict images/s and utilisation against the
GPU's own fp32 and bf16 matrix-multiply peaks, measured on the device.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.events import EventStorage

from cellseg_d2.utils.layout import ID_MAP_NAME, TEST_DIR, TRAIN_DIR

from .data.convert import load_cell_train_dicts
from .data.io import read_image, write_tiff
from .data.mapper import CellDatasetMapper
from .data.register import register_cell_datasets
from .data.rle import decode_rle, label_image_to_instances
from .data.synthetic import synthesize_image
from .data.validate import load_id_map
from .engine.trainer import CellTrainer, adapt_config_to_machine
from .inference.export import EXPORT_FORMATS
from .inference.predict import predict_folder, predict_to_files
from .inference.predictor import CellPredictor, Detection
from .inference.submission import write_submission

__all__ = ["run_benchmark", "format_benchmark", "matmul_peak_gflops", "measure_stream_memory"]

logger = logging.getLogger(__name__)

_PREFIX = "cellseg_benchmark"


def _reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark of this process (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        logger.warning("cannot reset the peak RSS (not Linux?): memory figures are cumulative")


def _rss_mib(field: str = "VmHWM") -> float:
    """This process's resident set in MiB: ``VmHWM`` (high-water mark) or ``VmRSS`` (now)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _sync() -> None:
    """Wait for queued CUDA work, so a timer stops when the GPU is done (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def matmul_peak_gflops(
    size: int = 2048,
    repeats: int = 5,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    inner: int = 1,
) -> float:
    """The measured matrix-multiply throughput of ``device`` in ``dtype``, GFLOP/s (best of
    ``repeats`` timings of ``inner`` back-to-back products), the denominator of utilisation.

    NOTE: on a GPU a single product is too short to time and launches asynchronously: use a
    large ``size`` (8192) and ``inner`` of 10 or more; the timing is closed by a synchronize.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    _sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        _sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 * inner / best / 1e9


def _time_conversion(data_root: Path) -> dict[str, float]:
    """Seconds to convert the training set cold (copy without cache) and to load it cached."""
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


def _loader_images_per_second(cfg: CfgNode, batches: int) -> float:
    """Images per second the training loader delivers, after two warm-up batches."""
    loader = iter(build_detection_train_loader(cfg, mapper=CellDatasetMapper(cfg, is_train=True)))
    for _ in range(2):
        next(loader)
    start = time.perf_counter()
    images = sum(len(next(loader)) for _ in range(batches))
    return images / (time.perf_counter() - start)


class _StockTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer, unchanged: stock DatasetMapper, SGD, default hooks."""


def _step_timer(trainer: DefaultTrainer, storage: EventStorage) -> Callable[[], float]:
    """A function running one training step of ``trainer`` and returning its seconds."""
    inner = trainer._trainer
    inner.storage = storage

    def step() -> float:
        _sync()
        start = time.perf_counter()
        inner.run_step()
        _sync()
        storage.step()
        return time.perf_counter() - start

    return step


def _time_training(cfg: CfgNode, iters: int) -> dict[str, float]:
    """Median seconds per iteration of CellTrainer and the stock trainer, run alternately, and
    the peak RSS of training."""
    _reset_peak_rss()
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ours = CellTrainer(cfg)
    stock_cfg = cfg.clone()
    if stock_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model":
        # detectron2 knows only per-parameter clipping; "norm" is its nearest equivalent.
        stock_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    stock = _StockTrainer(stock_cfg)
    times: dict[str, list[float]] = {"cellseg": [], "detectron2": []}
    with EventStorage(0) as storage:
        steps = {"cellseg": _step_timer(ours, storage), "detectron2": _step_timer(stock, storage)}
        for step in steps.values():  # warm-up: allocator, loader workers, first batch
            step()
        for _ in range(iters):
            for name, step in steps.items():
                times[name].append(step())
    medians = {name: statistics.median(values) for name, values in times.items()}
    peak = _rss_mib()
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


def _inference_figures(
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
    _reset_peak_rss()
    if cfg.MODEL.DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    predictor = CellPredictor(cfg)
    inputs = [predictor._model_input(read_image(image_dir / e["file_name"])) for e in entries]
    model = predictor.model
    model_rounds, forward_rounds, end_to_end_rounds, per_image = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():
            model.inference(inputs[:1], do_postprocess=False)  # warm-up
        for _ in range(rounds):
            times = []
            with torch.no_grad():
                for item in inputs:
                    start = time.perf_counter()
                    model.inference([item], do_postprocess=False)
                    _sync()
                    times.append(time.perf_counter() - start)
            per_image.append(times)
            model_rounds.append(sum(times) / len(times))
            start = time.perf_counter()
            with torch.no_grad():
                for item in inputs:  # the model's own call, with detectron2's mask paste
                    model([item])
                _sync()
            forward_rounds.append((time.perf_counter() - start) / len(inputs))
            start = time.perf_counter()
            results = predict_folder(predictor, image_dir, entries, progress=False)
            write_submission(results, os.path.join(tmp, "results.json"), zip_output=False)
            end_to_end_rounds.append((time.perf_counter() - start) / len(entries))
    rss_once = _rss_mib("VmRSS")
    for _ in range(2):  # memory must not grow with the number of images predicted
        predict_folder(predictor, image_dir, entries, progress=False)
    rss_growth = _rss_mib("VmRSS") - rss_once
    counted = inputs[: min(3, len(inputs))]
    flops = []
    with torch.no_grad():
        for item in counted:
            analysis = FlopCountAnalysis(model, [item])
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            flops.append(float(analysis.total()))
    counted_s = sum(statistics.median(r[i] for r in per_image) for i in range(len(counted)))
    model_s = statistics.median(model_rounds)
    forward_s = statistics.median(forward_rounds)
    end_to_end_s = statistics.median(end_to_end_rounds)
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
        "peak_rss_mib": _rss_mib(),
        "rss_growth_over_2_more_passes_mib": rss_growth,
    }


@contextlib.contextmanager
def _registered(data_root: Path) -> Iterator[str]:
    """Register the benchmark's dataset under a private prefix for the duration."""
    names = register_cell_datasets(data_root, prefix=_PREFIX, val_fraction=0.1, seed=0)
    try:
        yield _PREFIX
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


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
        A JSON-ready dict: machine, conversion, loader, training, inference, utilisation.
    """
    data_root = Path(data_root)
    cfg = adapt_config_to_machine(cfg)
    cfg.defrost()
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if cuda:
        cfg.SOLVER.AMP.ENABLED = True  # the training figure on a GPU is with AMP, as trained
    if not os.path.isfile(cfg.MODEL.WEIGHTS):  # speed needs no weights; never download them
        cfg.MODEL.WEIGHTS = ""
    report: dict[str, Any] = {
        "machine": {
            "device": cfg.MODEL.DEVICE,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "conversion": _time_conversion(data_root),
    }
    output_dir = tempfile.mkdtemp(prefix="cellseg_bench_out_")
    with _registered(data_root) as prefix:
        cfg.DATASETS.TRAIN = (f"{prefix}_trainval",)
        cfg.DATASETS.TEST = ()
        cfg.SOLVER.MAX_ITER = 10**6  # the schedule is irrelevant to step time
        cfg.SOLVER.EPOCHS = 0
        cfg.OUTPUT_DIR = output_dir
        loader = {}
        for elastic in (False, True):
            for workers in (0, 2):
                variant = cfg.clone()
                variant.INPUT.ELASTIC.ENABLED = elastic
                variant.DATALOADER.NUM_WORKERS = workers
                key = f"elastic_{'on' if elastic else 'off'}_workers_{workers}_images_per_s"
                loader[key] = _loader_images_per_second(variant, loader_batches)
        report["loader"] = loader
        report["training"] = _time_training(cfg, iters)
        consumed = cfg.SOLVER.IMS_PER_BATCH / report["training"]["cellseg_s_per_iter"]
        loader["model_consumes_images_per_s"] = consumed
        report["inference"] = _inference_figures(cfg, data_root, max_images=max(2, iters))
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
        report["gpu"] = _gpu_figures(cfg, report, fp32_peak=peak, bf16_peak=bf16)
    return report


def _gpu_figures(
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


def format_benchmark(report: dict[str, Any]) -> str:
    """The report as an aligned two-column table, one section per phase."""
    lines = []
    for section, values in report.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            shown = f"{value:.4g}" if isinstance(value, float) and np.isfinite(value) else value
            lines.append(f"  {key:<42} {shown}")
    return "\n".join(lines)


class _FixedDetector:
    """Stands in for the model in :func:`measure_stream_memory`: the same detections on every
    image, so the figure is about the reading and writing path, not the network. Calls
    ``on_batch(n)`` after each batch (where the memory samples are taken)."""

    def __init__(
        self, detections: list[Detection], batch_size: int, on_batch: Callable[[int], None]
    ) -> None:
        self.detections = detections
        self.batch_size = batch_size
        self.on_batch = on_batch

    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        self.on_batch(len(images))
        return [list(self.detections) for _ in images]

    def warn_detection_cap(self, num_images: int) -> None:
        """No cap to warn about: the detections are fixed."""


def measure_stream_memory(
    num_images: int,
    formats: tuple[str, ...] = EXPORT_FORMATS,
    image_size: int = 128,
    batch_size: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Resident memory while ``num_images`` images stream through :func:`predict_to_files`.

    Why: a prediction run over 10,000 images must not keep every result until the end. This
    runs the real path (background TIFF reads, per-image label/GeoJSON files, atomic shards,
    streamed assembly of the submission and the table) on ``num_images`` hard links to one
    small dense synthetic LZW TIFF, with the model replaced by a fixed set of detections (the
    synthetic image's own cells), and samples ``VmRSS`` about ten times along the way and once
    after the assembly. The growth is counted from the sample after the first tenth of the
    images (imports, caches and allocator pools settle there) to the one after the assembly.

    Args:
        num_images: images to stream (>= 10).
        formats: the formats to write.
        image_size: side of the square synthetic image in pixels.
        batch_size: images per fake model call.
        seed: seed of the synthetic image.

    Returns:
        ``images``, ``detections_per_image``, ``formats``, ``seconds``, ``images_per_s``, the
        RSS samples ``rss_samples_mib`` ``[[images done, MiB], ...]`` (the last one after the
        assembly), ``rss_growth_mib`` (after the assembly minus the first-tenth sample),
        ``rss_after_assembly_mib``, ``peak_rss_mib``.
    """
    if num_images < 10:
        raise ValueError(f"num_images must be >= 10, got {num_images}")
    rng = np.random.default_rng(seed)
    image, labels = synthesize_image(rng, image_size, image_size, dense=True)
    detections = []
    for cls, label in labels.items():
        for inst in label_image_to_instances(label.astype(np.int64)):
            x, y, w, h = inst.bbox
            crop = decode_rle(inst.rle)[y : y + h, x : x + w]
            detections.append(Detection(cls - 1, 0.9, y, x, crop))
    step = num_images // 10
    samples: list[list[float]] = []
    done = 0

    def on_batch(count: int) -> None:
        # Called before the batch's files are written: the sample covers ``done`` images.
        nonlocal done
        if done // step != (done + count) // step or done == 0:
            samples.append([done, _rss_mib("VmRSS")])
        done += count

    with tempfile.TemporaryDirectory(prefix="cellseg_stream_") as tmp:
        root = Path(tmp)
        first = root / "images" / "img_000000.tif"
        write_tiff(first, image[:, :, :3], compression="lzw")
        for index in range(1, num_images):
            os.link(first, first.with_name(f"img_{index:06d}.tif"))
        entries = [
            {
                "file_name": f"img_{i:06d}.tif",
                "id": i + 1,
                "height": image_size,
                "width": image_size,
            }
            for i in range(num_images)
        ]
        detector = _FixedDetector(detections, batch_size, on_batch)
        gc.collect()
        _reset_peak_rss()
        start = time.perf_counter()
        predict_to_files(
            detector,  # type: ignore[arg-type]  (duck-typed: batch_size and __call__)
            root / "images",
            entries,
            formats=formats,
            fingerprint={"benchmark": "stream"},
            output=root / "out" / "submission.json" if "coco" in formats else None,
            output_dir=root / "out" / "export",
            class_names=("a", "b", "c", "d"),
            progress=False,
        )
        seconds = time.perf_counter() - start
        after_assembly = _rss_mib("VmRSS")
    samples.append([num_images, after_assembly])
    baseline = next(rss for count, rss in samples if count >= step)
    return {
        "images": num_images,
        "detections_per_image": len(detections),
        "formats": ",".join(formats),
        "seconds": seconds,
        "images_per_s": num_images / seconds,
        "rss_samples_mib": samples,
        "rss_growth_mib": after_assembly - baseline,
        "rss_after_assembly_mib": after_assembly,
        "peak_rss_mib": _rss_mib(),
    }
