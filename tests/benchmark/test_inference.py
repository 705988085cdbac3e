"""Prediction-side figures: timing, FLOPs and memory per image, and the CUDA summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cellseg_d2.benchmark.inference import gpu_figures, inference_figures
from cellseg_d2.config import load_cellseg_config
from tests.conftest import INSTANT_CONFIG


def test_inference_figures_on_two_images(dataset: tuple[Path, list[dict], list[dict]]) -> None:
    root = dataset[0]
    # Small inputs and no detection kept: the figures, not the model, are under test.
    opts = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.0]
    opts += ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96]
    cfg = load_cellseg_config(INSTANT_CONFIG, opts)
    figures = inference_figures(cfg, root, max_images=2, rounds=1)
    assert figures["images"] == 2
    for key in ("model_s_per_image", "model_forward_s_per_image", "predict_s_per_image"):
        assert figures[key] > 0, key
    assert figures["ratio"] == pytest.approx(
        figures["predict_s_per_image"] / figures["model_s_per_image"]
    )
    assert figures["ratio_to_model_forward"] == pytest.approx(
        figures["predict_s_per_image"] / figures["model_forward_s_per_image"]
    )
    assert figures["gflops_per_image"] > 0 and figures["achieved_gflops_per_s"] > 0
    assert figures["peak_rss_mib"] > 0
    assert isinstance(figures["rss_growth_over_2_more_passes_mib"], float)
    assert "peak_gpu_memory_mib" not in figures  # CPU run


def test_gpu_figures_divide_by_the_device_peaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"fake {device}")
    cfg = load_cellseg_config(INSTANT_CONFIG, ["MODEL.DEVICE", "cpu"])
    report = {
        "training": {"images_per_s": 10.0, "peak_gpu_memory_mib": 900.0},
        "inference": {
            "gflops_per_image": 2.0,
            "predict_s_per_image": 0.25,
            "peak_gpu_memory_mib": 300.0,
            "achieved_gflops_per_s": 50.0,
        },
    }
    gpu = gpu_figures(cfg, report, fp32_peak=100.0, bf16_peak=400.0)
    assert gpu["name"] == "fake cpu"
    assert gpu["predict_images_per_s"] == 4.0
    assert gpu["inference_fraction_of_fp32_peak"] == 0.5
    assert gpu["training_fraction_of_fp32_peak"] == pytest.approx(3 * 2.0 * 10.0 / 100.0)
    assert gpu["training_fraction_of_bf16_peak"] == pytest.approx(3 * 2.0 * 10.0 / 400.0)
    assert gpu["training_peak_gpu_memory_mib"] == 900.0
    assert gpu["predict_peak_gpu_memory_mib"] == 300.0
