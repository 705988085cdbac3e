"""One writer per output: an advisory lock file beside it, held for the whole run.

Why: two runs writing the same output (say, a prediction and its own ``--resume`` started in a
second terminal) each finish "successfully" while one removes or rebuilds what the other is
still using, and the survivor's output silently holds a fraction of the results. A run
therefore takes ``<output>.lock`` before it touches anything of that output and keeps it until
its last file is in place; a second run is refused at once, naming the holder.

How: ``fcntl.flock`` on the lock file. The kernel drops the lock when the holding process ends,
however it ends (crash, ``kill -9``, power loss of the process), so a stale lock cannot block the
next run, and nothing has to guess from a PID whether its holder still lives. The file also
records the holder's PID, host and start time, but only for the message. The holder removes the
file when it finishes; a run that opened the file just before that removal notices that the
name no longer leads to the file it locked, and tries again with the new one.

NOTE on NFS: Linux NFS clients (since 2.6.12) carry out ``flock`` as a whole-file byte-range
lock on the server (the NLM protocol for NFSv3, part of the protocol for NFSv4), so runs on two
machines sharing the output exclude each other; the server frees the lock of a crashed client
when its lease or grace period ends. Mounted with ``nolock`` or ``local_lock=flock|all``, locks
stay on one machine: runs on other hosts are then not excluded, which the host name recorded in
the lock file lets a reader spot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cellseg_d2.errors import CellSegError

__all__ = ["OutputLockedError", "hold_lock", "lock_path_for"]

_LOCK_SUFFIX = ".lock"
_HOLDER_BYTES = 4096  # the holder record is a short JSON line; more is not read


class OutputLockedError(CellSegError):
    """Another process (or thread) holds the output's lock: it is writing that output now."""


def lock_path_for(target: str | os.PathLike) -> Path:
    """The lock file of an output: ``<target>.lock`` beside it (a file or a folder alike)."""
    target = Path(target)
    return target.with_name(target.name + _LOCK_SUFFIX)


class _Held:
    """A lock this process holds: its file descriptor, the owning thread and the nesting depth."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.thread = threading.get_ident()
        self.depth = 1


_HELD: dict[str, _Held] = {}  # real path of the lock file -> the lock this process holds
_HELD_GUARD = threading.Lock()


def _holder_text(fd: int) -> str:
    """Who holds the lock, from its record: ``pid N on HOST since TIME``, or a placeholder."""
    try:
        record = json.loads(os.pread(fd, _HOLDER_BYTES, 0))
        return f"pid {int(record['pid'])} on {record['host']} since {record['since']}"
    except (OSError, ValueError, TypeError, KeyError):  # written a moment after the lock
        return "a process that has not yet written its pid"


def _open_locked(path: Path, what: str) -> int:
    """Open ``path`` (created if needed) and lock it without waiting; return its descriptor.

    Raises:
        OutputLockedError: another open file description holds the lock.
        CellSegError: the lock file cannot be created (e.g. a read-only folder).
    """
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CellSegError(f"{path}: cannot create the lock file of {what}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder_text(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CellSegError(f"{path}: cannot lock {what}: {exc}") from exc
            raise OutputLockedError(
                f"{what}: another run is writing this output ({holder}; lock file {path}). "
                "Wait until it ends, or stop it first; a second run, with or without --resume, "
                "would mix or lose its results"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file we opened: lock the new one


def _write_holder(fd: int) -> None:
    """Record this process in the lock file, for the message a refused run prints."""
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)


@contextlib.contextmanager
def hold_lock(target: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of the output ``target`` for the ``with`` block.

    Re-entrant within one thread: a tool may take the lock before it builds the model (so a
    second run is refused before minutes of loading) and the library function it calls takes
    it again; only the outermost block releases it. Another thread of the same process is
    refused like another process.

    Args:
        target: the output (file or folder) to own; the lock file is :func:`lock_path_for`.
        what: how to name the output in messages (default: ``target``).

    Yields:
        The lock file's path.

    Raises:
        OutputLockedError: another run holds the lock (the message names its PID and host).
        CellSegError: the lock file cannot be created or locked.
    """
    path = lock_path_for(target)
    what = what or str(target)
    key = os.path.realpath(path)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            if held.thread != threading.get_ident():
                raise OutputLockedError(
                    f"{what}: another thread of this process is writing this output "
                    f"(lock file {path})"
                )
            held.depth += 1
        else:
            fd = _open_locked(path, what)
            _write_holder(fd)
            held = _HELD[key] = _Held(fd)
    try:
        yield path
    finally:
        with _HELD_GUARD:
            held.depth -= 1
            if held.depth == 0:
                del _HELD[key]
                # Remove the name while still holding the lock, then release: a run that opened
                # the old file meanwhile sees that the name is gone and retries (_open_locked).
                # (Only our own file: one removed by hand and made anew belongs to another run.)
                with contextlib.suppress(FileNotFoundError):
                    if os.path.samestat(os.fstat(held.fd), os.stat(path)):
                        os.unlink(path)
                os.close(held.fd)
