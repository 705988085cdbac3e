"""The benchmark tool runs end to end and reports every figure (this checks the tool, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import INSTANT_CONFIG, REPO_ROOT


def test_benchmark_writes_every_figure(synthetic_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO_ROOT / "tools" / "benchmark.py"),
        "--config-file", str(INSTANT_CONFIG),
        "--data", str(synthetic_root),
        "--iters", "2",
        "--json", str(output),
        "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(output.read_text())
    expected = {
        "conversion": {"images", "cold_s", "cached_s"},
        "loader": {
            "elastic_off_workers_0_images_per_s",
            "elastic_off_workers_2_images_per_s",
            "elastic_on_workers_0_images_per_s",
            "elastic_on_workers_2_images_per_s",
            "model_consumes_images_per_s",
        },
        "training": {"cellseg_s_per_iter", "detectron2_s_per_iter", "ratio", "peak_rss_mib"},
        "inference": {
            "images",
            "model_s_per_image",
            "model_forward_s_per_image",
            "predict_s_per_image",
            "ratio",
            "ratio_to_model_forward",
            "gflops_per_image",
            "achieved_gflops_per_s",
            "peak_rss_mib",
        },
        "utilisation": {
            "fp32_matmul_peak_gflops_per_s",
            "inference_gflops_per_s",
            "fraction_of_peak",
        },
    }
    for section, keys in expected.items():
        assert keys <= set(report[section]), section
        for key in keys:
            assert report[section][key] > 0, (section, key)
    assert isinstance(report["inference"]["rss_growth_over_2_more_passes_mib"], float)
    assert "[training]" in proc.stdout


def test_benchmark_stream_images_reports_memory(tmp_path: Path) -> None:
    from .conftest import load_tool

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
