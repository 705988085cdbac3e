"""The whole benchmark: the tool runs end to end and reports every figure (this checks the tool,
not speed); the table; the dataset registered for the duration only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog

from cellseg_d2.benchmark import format_benchmark
from cellseg_d2.benchmark.report import BENCHMARK_PREFIX, registered_dataset
from tests.conftest import INSTANT_CONFIG, REPO_ROOT


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


def test_format_benchmark_aligns_sections_and_rounds_finite_floats() -> None:
    report = {
        "training": {"cellseg_s_per_iter": 0.123456789, "peak_rss_mib": float("nan")},
        "stream": {"formats": "coco,csv", "images": 20},
    }
    lines = format_benchmark(report).splitlines()
    assert lines[0] == "[training]" and lines[3] == "[stream]"
    assert lines[1] == f"  {'cellseg_s_per_iter':<42} 0.1235"
    assert lines[2].split() == ["peak_rss_mib", "nan"]  # not rounded, not an error
    assert lines[4].split() == ["formats", "coco,csv"] and lines[5].split() == ["images", "20"]
    assert len({line.index(line.split()[1]) for line in lines if line.startswith("  ")}) == 1


def test_registered_dataset_is_removed_afterwards_even_on_error(synthetic_root: Path) -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with registered_dataset(synthetic_root) as prefix:
            assert prefix == BENCHMARK_PREFIX
            assert f"{prefix}_trainval" in DatasetCatalog.list()
            raise RuntimeError("inside")
    assert not [name for name in DatasetCatalog.list() if name.startswith(BENCHMARK_PREFIX)]
