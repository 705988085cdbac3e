"""Memory of a streamed prediction run: the tool's --stream-images and the measurement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.benchmark.stream import FixedDetector, measure_stream_memory
from cellseg_d2.inference.detections import Detection
from tests.conftest import REPO_ROOT, load_tool


def test_benchmark_stream_images_reports_memory(tmp_path: Path) -> None:
    tool = load_tool(REPO_ROOT / "tools" / "benchmark.py")
    output = tmp_path / "stream.json"
    argv = ["--stream-images", "20", "--stream-formats", "coco,csv", "--json", str(output)]
    assert tool.main(tool.parse_args(argv)) == 0
    stream = json.loads(output.read_text())["stream"]
    assert stream["images"] == 20 and stream["formats"] == "coco,csv"
    assert stream["detections_per_image"] > 0
    counts = [count for count, _ in stream["rss_samples_mib"]]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 20
    assert {"rss_growth_mib", "rss_after_assembly_mib", "peak_rss_mib", "seconds"} <= set(stream)


def test_measure_stream_memory_samples_along_the_way() -> None:
    stream = measure_stream_memory(12, formats=("csv",), image_size=64, batch_size=3)
    assert stream["images"] == 12 and stream["formats"] == "csv"
    counts = [count for count, _ in stream["rss_samples_mib"]]
    assert counts[0] == 0 and counts[-1] == 12 and len(counts) >= 3
    assert all(rss > 0 for _, rss in stream["rss_samples_mib"])
    assert stream["rss_after_assembly_mib"] == stream["rss_samples_mib"][-1][1]
    assert stream["images_per_s"] == pytest.approx(12 / stream["seconds"])
    with pytest.raises(ValueError, match=">= 10"):
        measure_stream_memory(9)


def test_fixed_detector_returns_copies_and_reports_batches() -> None:
    batches: list[int] = []
    cell = Detection(0, 0.9, 1, 2, np.ones((3, 3), bool))
    detector = FixedDetector([cell], batch_size=2, on_batch=batches.append)
    out = detector([np.zeros((4, 4, 3), np.uint8)] * 2)
    assert [[d is cell for d in image] for image in out] == [[True], [True]]
    assert out[0] is not out[1]
    out[0].clear()  # a caller changing its list leaves the fixed detections alone
    again = detector([np.zeros((4, 4, 3), np.uint8)])
    assert len(again) == 1 and len(again[0]) == 1 and again[0][0] is cell
    assert batches == [2, 1] and detector.batch_size == 2
