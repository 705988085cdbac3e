"""What the benchmark asks of the machine itself: resident memory, GPU sync, matmul peak.

Why a module of its own: every phase (training, inference, streaming) samples the process's
resident set and closes its timers with a CUDA synchronize, and the utilisation figures divide
by the device's own measured matrix-multiply peak.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from types import TracebackType

import torch

__all__ = [
    "ProcessTreeMemory",
    "cuda_sync",
    "descendants",
    "matmul_peak_gflops",
    "process_cpu_seconds",
    "reset_peak_rss",
    "rss_mib",
]

logger = logging.getLogger(__name__)


def reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark of this process (Linux), so the next
    ``rss_mib("VmHWM")`` reports the peak of one phase, not of the whole run."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        logger.warning("cannot reset the peak RSS (not Linux?): memory figures are cumulative")


def rss_mib(field: str = "VmHWM", pid: int | str = "self") -> float:
    """A process's resident set in MiB: ``VmHWM`` (high-water mark) or ``VmRSS`` (now).

    Args:
        field: the ``/proc/<pid>/status`` line to read.
        pid: the process; this one by default.

    Returns:
        NaN when the status lacks the field or the process is gone.
    """
    return _proc_kib(f"/proc/{pid}/status", field) / 1024.0


def _proc_kib(path: str, field: str) -> float:
    """The ``<field>: <n> kB`` value of a ``/proc`` file, NaN when absent or unreadable."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(f"{field}:"):
                    return float(line.split()[1])
    except OSError:  # the process exited between listing and reading
        pass
    return float("nan")


def descendants(root: int) -> list[int]:
    """The ids of every live process below ``root`` (children, their children...), from
    ``/proc/<pid>/stat`` (Linux). Forkserver- and spawn-started workers are grandchildren."""
    parent_of = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        parent_of[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold ")"
    found, frontier = [], [root]
    while frontier:
        frontier = [pid for pid, parent in parent_of.items() if parent in frontier]
        found.extend(frontier)
    return found


class ProcessTreeMemory:
    """Peak memory of this process and of every process it starts while the block runs.

    Processes it had started before the block (a pool, a leftover) are not counted, except the
    ones named in ``keep`` (a worker fork server started once for several measured runs, which
    each run uses and should pay for).

    Why: a DataLoader reads in worker processes, whose memory ``VmHWM`` of this process never
    sees. Entering resets this process's high-water mark; a background thread then looks at the
    process tree every ``interval_s`` seconds and keeps each descendant's own ``VmHWM`` (a kernel
    high-water mark, so sampling misses at most a worker's last ``interval_s``) and the largest
    sum of proportional set sizes (``Pss`` of ``smaps_rollup``: pages shared after a ``fork``
    are split among their sharers, so the sum is the tree's real footprint, sampled).

    Why the ``Pss`` sums are rarer: the kernel walks every page table to answer, 15-20 ms of CPU
    per process with torch loaded; summed over a slide run's six processes every 0.5 s that
    took a fifth of a core from the run it measured (on 2 cores, ~15 ms per tile). They are
    taken at entry, at exit and in between only so often that they cost at most ``pss_share``
    of one core. The sampler's own CPU time is left out of ``cpu_seconds``.

    Attributes (after the block):
        main_peak_mib: this process's ``VmHWM`` over the block (exact).
        worker_peaks_mib: ``{pid: VmHWM}`` of each descendant seen.
        total_pss_peak_mib: the largest sampled sum of ``Pss`` over the tree.
        pss_samples: how many ``Pss`` sums were taken.
        cpu_seconds: CPU time (user + system) the tree used in the block, less the sampler's
            own: this process's exactly, each descendant's as last sampled (a worker that exits
            between samples loses at most its last ``interval_s``). Over the wall time it says
            how many cores were busy.
        sampler_cpu_seconds: the CPU time the sampling took (left out of ``cpu_seconds``).
    """

    def __init__(
        self, interval_s: float = 0.5, keep: Iterable[int] = (), pss_share: float = 0.02
    ) -> None:
        self.interval_s = interval_s
        self.keep = set(keep)
        self.pss_share = pss_share
        self.main_peak_mib = float("nan")
        self.worker_peaks_mib: dict[int, float] = {}
        self.total_pss_peak_mib = 0.0
        self.pss_samples = 0
        self.cpu_seconds = float("nan")
        self.sampler_cpu_seconds = 0.0
        self._cpu: dict[int, float] = {}  # last sampled CPU seconds of each descendant
        self._cpu_before: dict[int, float] = {}  # kept descendants' CPU seconds at the start
        self._main_cpu_before = 0.0
        self._next_pss = 0.0  # time.monotonic() from which the next Pss sum may be taken
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._before: set[int] = set()  # descendants older than the block: not its workers

    @property
    def total_rss_peak_mib(self) -> float:
        """This process's peak plus each worker's: an upper bound of the tree's peak resident
        set (peaks of different moments are added, and pages shared after a fork are counted
        once per process)."""
        return self.main_peak_mib + sum(self.worker_peaks_mib.values())

    def _sample(self, pss: bool = False) -> None:
        """Update the worker peaks and CPU times from the current tree, and the largest ``Pss``
        sum when ``pss`` or when its CPU share allows; the sampler's CPU time is counted."""
        started, cpu_started = time.monotonic(), time.thread_time()
        pids = [pid for pid in descendants(os.getpid()) if pid not in self._before]
        for pid in pids:
            cpu = process_cpu_seconds(pid)
            if cpu == cpu:
                self._cpu[pid] = cpu
            peak = rss_mib("VmHWM", pid)
            if peak == peak:  # not NaN: the process was still there
                self.worker_peaks_mib[pid] = max(self.worker_peaks_mib.get(pid, 0.0), peak)
        if pss or started >= self._next_pss:
            pss_cpu = time.thread_time()
            total = _proc_kib("/proc/self/smaps_rollup", "Pss") / 1024.0
            for pid in pids:
                worker_pss = _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss") / 1024.0
                total += worker_pss if worker_pss == worker_pss else 0.0
            if total == total:
                self.total_pss_peak_mib = max(self.total_pss_peak_mib, total)
            self.pss_samples += 1
            self._next_pss = time.monotonic() + (time.thread_time() - pss_cpu) / self.pss_share
        self.sampler_cpu_seconds += time.thread_time() - cpu_started

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> ProcessTreeMemory:
        reset_peak_rss()
        self._before = set(descendants(os.getpid())) - self.keep
        self._sample(pss=True)
        self._cpu_before = dict(self._cpu)
        self.sampler_cpu_seconds = 0.0
        self._main_cpu_before = _own_cpu_seconds()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        cpu_now = _own_cpu_seconds()
        sampler_before = self.sampler_cpu_seconds
        self._sample(pss=True)
        self.sampler_cpu_seconds = sampler_before  # the last sample came after cpu_now
        self.main_peak_mib = rss_mib("VmHWM")
        self.cpu_seconds = cpu_now - self._main_cpu_before - self.sampler_cpu_seconds
        self.cpu_seconds += sum(t - self._cpu_before.get(pid, 0.0) for pid, t in self._cpu.items())


def _own_cpu_seconds() -> float:
    """This process's CPU time (all threads), on the same nanosecond clocks as the sampler's
    ``thread_time`` that is subtracted from it (``os.times`` counts 10 ms ticks: a short idle
    block could come out below zero)."""
    return time.process_time()


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (NaN when it is gone).

    Why from ``/proc``: the workers are not this process's children once they exit through a
    fork server, so ``os.times`` never sees their time.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    # after the command name: state is field 3, utime and stime fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
