"""The engines benchmark runs all three engines on one image and reports equal detections."""

from __future__ import annotations

import pytest

from cellseg_d2.benchmark.engines import ENGINES, format_engines, time_engines
from cellseg_d2.config import build_config
from tests.conftest import INSTANT_CONFIG

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")


def test_three_engines_timed_with_the_same_detections() -> None:
    cfg = build_config(
        INSTANT_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.05]
    )
    report = time_engines(cfg, size=128, repeats=2, threads=1)
    assert list(report["engines"]) == list(ENGINES)
    counts = {row["detections"] for row in report["engines"].values()}
    assert len(counts) == 1  # the exported graphs find what the eager model finds
    for row in report["engines"].values():
        assert 0 < row["min_s"] <= row["median_s"]
    table = format_engines(report)
    assert "128x128 image, 1 thread(s)" in table and "onnx" in table
