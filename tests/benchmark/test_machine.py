"""The machine figures: resident memory (with workers), its reset, GPU sync, the matmul peak."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable

import numpy as np
import pytest

from cellseg_d2.benchmark.machine import (
    ProcessTreeMemory,
    cuda_sync,
    matmul_peak_gflops,
    process_cpu_seconds,
    reset_peak_rss,
    rss_mib,
)


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


def _hold_memory(mib: int, seconds: float) -> None:
    """A worker that keeps ``mib`` MiB resident for ``seconds``."""
    block = np.ones(mib * 2**20, np.uint8)
    time.sleep(seconds)
    del block


def _measured_worker(target: Callable[..., None], *args: float) -> tuple[ProcessTreeMemory, int]:
    """Run ``target(*args)`` in a forked worker under a ProcessTreeMemory; the worker's pid."""
    context = multiprocessing.get_context("fork")
    with ProcessTreeMemory(interval_s=0.05) as memory:
        worker = context.Process(target=target, args=args)
        worker.start()
        worker.join()
    assert worker.pid is not None
    return memory, worker.pid


def test_process_tree_memory_sees_the_workers() -> None:
    memory, pid = _measured_worker(_hold_memory, 64, 0.5)
    assert pid in memory.worker_peaks_mib
    assert memory.worker_peaks_mib[pid] >= 64
    assert memory.main_peak_mib > 0 and memory.total_pss_peak_mib > 0
    assert memory.total_rss_peak_mib == pytest.approx(
        memory.main_peak_mib + sum(memory.worker_peaks_mib.values())
    )
    assert math.isnan(rss_mib("VmRSS", pid=2**22 + 1))  # no such process


def test_process_tree_memory_counts_an_older_process_only_when_kept() -> None:
    context = multiprocessing.get_context("fork")
    older = context.Process(target=_hold_memory, args=(16, 3.0))
    older.start()
    try:
        time.sleep(0.3)
        with ProcessTreeMemory(interval_s=0.05) as skipped:
            time.sleep(0.2)
        with ProcessTreeMemory(interval_s=0.05, keep=[older.pid]) as kept:
            time.sleep(0.2)
    finally:
        older.join()
    assert older.pid not in skipped.worker_peaks_mib
    assert kept.worker_peaks_mib[older.pid] >= 16


def _spin(seconds: float, then_sleep: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    time.sleep(then_sleep)  # alive for a few more samples: its CPU time is seen


def test_process_tree_cpu_time_counts_the_workers_and_not_a_sleep() -> None:
    busy, _ = _measured_worker(_spin, 0.6, 0.3)
    with ProcessTreeMemory(interval_s=0.05) as idle:
        time.sleep(0.5)
    assert busy.cpu_seconds >= 0.5  # the worker's spin, which os.times of this process misses
    assert 0 <= idle.cpu_seconds < 0.3
    assert process_cpu_seconds(os.getpid()) > 0
    assert math.isnan(process_cpu_seconds(2**22 + 1))  # no such process


def test_pss_sums_are_taken_within_their_cpu_share_and_the_sampler_is_not_counted() -> None:
    with ProcessTreeMemory(interval_s=0.02, pss_share=1e-6) as rare:
        time.sleep(0.4)
    with ProcessTreeMemory(interval_s=0.02, pss_share=1.0) as often:
        time.sleep(0.4)
    assert rare.pss_samples == 2  # at entry and at exit only
    assert often.pss_samples > 4
    assert rare.total_pss_peak_mib > 0 and often.sampler_cpu_seconds > 0
    # the sampler's own reading of /proc is not the measured block's work
    assert 0 <= often.cpu_seconds < 0.1
