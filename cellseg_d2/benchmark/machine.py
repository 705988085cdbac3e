"""What the benchmark asks of the machine itself: resident memory, GPU sync, matmul peak.

Why a module of its own: every phase (training, inference, streaming) samples the process's
resident set and closes its timers with a CUDA synchronize, and the utilisation figures divide
by the device's own measured matrix-multiply peak.
"""

from __future__ import annotations

import logging
import time

import torch

__all__ = ["cuda_sync", "matmul_peak_gflops", "reset_peak_rss", "rss_mib"]

logger = logging.getLogger(__name__)


def reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark of this process (Linux), so the next
    ``rss_mib("VmHWM")`` reports the peak of one phase, not of the whole run."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        logger.warning("cannot reset the peak RSS (not Linux?): memory figures are cumulative")


def rss_mib(field: str = "VmHWM") -> float:
    """This process's resident set in MiB: ``VmHWM`` (high-water mark) or ``VmRSS`` (now).

    Returns NaN when ``/proc/self/status`` lacks the field.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cuda_sync() -> None:
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
    cuda_sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        cuda_sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 * inner / best / 1e9
