"""The machine figures: resident memory, its reset, GPU sync, the matmul peak."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cellseg_d2.benchmark.machine import cuda_sync, matmul_peak_gflops, reset_peak_rss, rss_mib


def test_rss_reads_the_process_status() -> None:
    now, peak = rss_mib("VmRSS"), rss_mib("VmHWM")
    assert 0 < now <= peak
    assert math.isnan(rss_mib("NoSuchField"))


def test_reset_peak_rss_forgets_an_earlier_peak() -> None:
    block = np.ones(96 * 2**20, np.uint8)  # 96 MiB, touched
    with_block = rss_mib("VmHWM")
    del block
    reset_peak_rss()
    assert rss_mib("VmHWM") < with_block - 48


@pytest.mark.parametrize("inner", [1, 3])
def test_matmul_peak_is_a_positive_rate(inner: int) -> None:
    cuda_sync()  # no-op without CUDA, and never an error
    peak = matmul_peak_gflops(size=64, repeats=2, inner=inner)
    assert math.isfinite(peak) and peak > 0
