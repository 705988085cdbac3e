"""Tests for cellseg_d2.utils.processes: workers that survive a parent whose OpenCV pool runs."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

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
