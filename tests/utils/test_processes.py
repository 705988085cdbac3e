"""Tests for cellseg_d2.utils.processes: workers that survive a parent whose OpenCV pool runs."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from cellseg_d2.utils.processes import worker_context


def _one_thread() -> None:
    cv2.setNumThreads(1)


def _blur_sum(size: int) -> int:
    return int(cv2.GaussianBlur(np.ones((size, size), np.uint8), (5, 5), 0).sum())


@pytest.fixture()
def opencv_pool_running() -> Iterator[None]:
    """Start OpenCV's thread pool in this process, as a slide run has before its workers start
    (with ``fork``, a worker's ``cv2.setNumThreads`` then waits forever: the CI hang)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    _blur_sum(2000)
    yield
    cv2.setNumThreads(threads)


@pytest.mark.timeout(120)
def test_workers_use_opencv_after_the_parents_pool_ran(opencv_pool_running: None) -> None:
    context = worker_context([__name__])
    assert context.get_start_method() in ("forkserver", "spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_one_thread) as pool:
        assert pool.submit(_blur_sum, 500).result(timeout=60) == 500 * 500


def test_forkserver_where_the_platform_has_it() -> None:
    method = worker_context().get_start_method()
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert method == "forkserver"
    else:
        assert method == "spawn"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_worker_server_is_started_before_any_worker() -> None:
    # a fresh interpreter: this one's server may already run
    code = (
        "import os; from cellseg_d2.utils.processes import start_worker_server\n"
        "pid = os.getpid()\n"
        "def children(): return len(open(f'/proc/{pid}/task/{pid}/children').read().split())\n"
        "before = children()\n"
        "context = start_worker_server(['json'])\n"
        "print(context.get_start_method(), before, children())"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    method, before, after = out.stdout.split()
    # the server (and its resource tracker) run before any worker was asked for
    assert method == "forkserver" and int(before) == 0 and int(after) >= 1
