"""Memory of a long streamed prediction run (``tools/benchmark.py --stream-images N``).

Why: a prediction run over 10,000 images must not keep every result until the end; this
measures the reading and writing path with the network replaced by fixed detections.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellseg_d2.benchmark.machine import reset_peak_rss, rss_mib
from cellseg_d2.data.io import write_tiff
from cellseg_d2.data.rle import decode_rle, label_image_to_instances
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.export import EXPORT_FORMATS
from cellseg_d2.inference.predict import predict_to_files

__all__ = ["FixedDetector", "measure_stream_memory"]


class FixedDetector:
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
        """The fixed detections for each image of the batch, after reporting the batch size."""
        self.on_batch(len(images))
        return [list(self.detections) for _ in images]

    def warn_detection_cap(self, num_images: int) -> None:
        """No cap to warn about: the detections are fixed."""


def _synthetic_detections(image_size: int, seed: int) -> tuple[np.ndarray, list[Detection]]:
    """A dense synthetic image and its own cells as detections (score 0.9)."""
    rng = np.random.default_rng(seed)
    image, labels = synthesize_image(rng, image_size, image_size, dense=True)
    detections = []
    for cls, label in labels.items():
        for inst in label_image_to_instances(label.astype(np.int64)):
            x, y, w, h = inst.bbox
            crop = decode_rle(inst.rle)[y : y + h, x : x + w]
            detections.append(Detection(cls - 1, 0.9, y, x, crop))
    return image, detections


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
    image, detections = _synthetic_detections(image_size, seed)
    step = num_images // 10
    samples: list[list[float]] = []
    done = 0

    def on_batch(count: int) -> None:
        # Called before the batch's files are written: the sample covers ``done`` images.
        nonlocal done
        if done // step != (done + count) // step or done == 0:
            samples.append([done, rss_mib("VmRSS")])
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
        detector = FixedDetector(detections, batch_size, on_batch)
        gc.collect()
        reset_peak_rss()
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
        after_assembly = rss_mib("VmRSS")
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
        "peak_rss_mib": rss_mib(),
    }
