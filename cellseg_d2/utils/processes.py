"""Worker processes that are safe to start from a process that already runs threads.

Why not ``fork``: OpenCV's thread pool (and other native pools: OpenMP, torch's) does not
survive ``fork()``. Once the parent has run a parallel OpenCV call, a forked child that calls
OpenCV waits forever for pool threads that were not copied (opencv/opencv#5150,
opencv/opencv-python#249); the slide cell workers hung exactly so in CI. ``forkserver`` forks
every worker from a small server process that never ran those pools, and the server imports
the heavy modules once (``preload``), so a worker starts in milliseconds with torch already
imported instead of re-importing it as ``spawn`` would (seconds and ~1 GiB per worker).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing.context import BaseContext

__all__ = ["start_worker_server", "worker_context"]


def worker_context(preload: Sequence[str] = ()) -> BaseContext:
    """The start method for worker pools and DataLoader workers: ``forkserver`` where the
    platform has it (Linux, macOS), else ``spawn`` (Windows).

    Args:
        preload: modules the fork server imports before forking workers (only honoured when
            this call starts the server; a server already running keeps its imports, which is
            only slower, never wrong: a worker imports what it lacks).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    if preload:
        context.set_forkserver_preload(list(preload))
    return context


def start_worker_server(preload: Sequence[str]) -> BaseContext:
    """Start the fork server (where the platform has one) now, without waiting for it, and
    return the workers' context.

    Why: the server's first job is importing ``preload`` (torch, OpenCV: 3-5 s on 2 cores).
    Started before the model is built, that import overlaps the build instead of delaying
    the first tile; the workers started later find the server ready.
    """
    context = worker_context(preload)
    if context.get_start_method() == "forkserver":
        import multiprocessing.forkserver  # noqa: PLC0415  (Unix only)

        multiprocessing.forkserver.ensure_running()
    return context
