"""The output lock: one writer per output, across processes, freed when its holder dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cellseg_d2.errors import CellSegError
from cellseg_d2.utils.lock import OutputLockedError, hold_lock, lock_path_for
from tests.conftest import REPO_ROOT

# A second process that takes the lock, says so, and holds it until its stdin closes.
_HOLDER = """
import sys
from cellseg_d2.utils.lock import OutputLockedError, hold_lock
try:
    with hold_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
except OutputLockedError as exc:
    print("refused:", exc, flush=True)
"""


def _start_holder(target: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_lock_refuses_another_process_and_names_the_holder(tmp_path: Path) -> None:
    target = tmp_path / "sub.json"
    with hold_lock(target) as path:
        assert path == lock_path_for(target) == tmp_path / "sub.json.lock"
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        holder = _start_holder(target)
        out, _ = holder.communicate(timeout=60)
        assert out.startswith("refused:")
        assert f"pid {os.getpid()} on {socket.gethostname()}" in out
        assert "another run is writing this output" in out and str(path) in out
    assert not path.exists(), "the holder removes its lock file when done"
    holder = _start_holder(target)
    assert holder.stdout.readline() == "locked\n"
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    target = tmp_path / "export"
    holder = _start_holder(target)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid} "):
            with hold_lock(target):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # the dead holder's file is still there, but the kernel freed its lock
    assert lock_path_for(target).exists()
    with hold_lock(target):
        assert json.loads(lock_path_for(target).read_text())["pid"] == os.getpid()


def test_lock_is_reentrant_in_a_thread_and_refuses_other_threads(tmp_path: Path) -> None:
    target = tmp_path / "sub.json"
    errors: list[Exception] = []

    def other_thread() -> None:
        try:
            with hold_lock(target):
                pass
        except OutputLockedError as exc:
            errors.append(exc)

    with hold_lock(target):
        with hold_lock(target):
            pass
        assert lock_path_for(target).exists(), "only the outermost block releases"
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another thread" in str(errors[0])
    assert not lock_path_for(target).exists()
    with hold_lock(target):  # free again
        pass


def test_lock_file_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "sub.json"
    lock_path_for(target).mkdir()  # a folder where the lock file goes
    with pytest.raises(CellSegError, match="cannot create the lock file"):
        with hold_lock(target):
            pass
