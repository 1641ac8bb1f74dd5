"""Child processes that never outlive their owner: a parent-death signal, plus a watch on the parent's pid.

A process started with `child_environment()` in its environment calls `die_with_parent()` early, with the parent
its settings name: on Linux the kernel sends it SIGTERM the moment its parent dies, whatever killed the parent
(SIGKILL included); a parent that died before the child asked is caught by comparing `getppid()` once, and where
the kernel cannot help a thread polls `getppid()`. A child that is not Python gets the same signal through
`exec_child_preexec()`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

from .settings import PARENT_PID_VARIABLE, inherited_environment

__all__ = ["PARENT_PID_VARIABLE", "child_environment", "die_with_parent", "start_child", "stop_children", "exec_child_preexec"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def child_environment(env: dict | None = None) -> dict:
    """`env` (default: a copy of this process's environment) marked so that the child follows this process's
    death."""
    return {**(inherited_environment() if env is None else env), PARENT_PID_VARIABLE: str(os.getpid())}


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def exec_child_preexec():
    """A `preexec_fn` for a child that is not Python (the embedded redis-server): the parent-death signal survives
    exec, so the kernel ends the child with its parent."""
    parent = os.getpid()

    def preexec() -> None:
        _set_parent_death_signal()
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def die_with_parent(parent: int | None, poll_seconds: float = 1.0) -> bool:
    """If this process was started as a child (its settings name the `parent`, from `child_environment`), end it
    with SIGTERM when that parent dies. Returns whether a parent is watched."""
    if not parent:
        return False
    kernel_watches = _set_parent_death_signal()
    if _parent_gone(parent):  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)
    if kernel_watches:
        return True  # one SIGTERM only: a second would turn the warm shutdown into a cold one

    def watch() -> None:
        while not _parent_gone(parent):
            time.sleep(poll_seconds)
        log.warning("parent process %d is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="seggpt-parent-watch", daemon=True).start()
    return True


def start_child(command: Sequence[str], env: dict | None = None, **popen) -> subprocess.Popen:
    """Start `command` as a child that ends when this process ends (it must call `die_with_parent`)."""
    return subprocess.Popen(list(command), env=child_environment(env), **popen)


def stop_children(processes: Sequence[subprocess.Popen], timeout: float = 25.0) -> None:
    """SIGTERM (a warm shutdown: a running chunk stops at its next batch and is re-queued), then SIGKILL for any
    child still alive after `timeout` seconds."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("child %d did not stop within %.0f s: killing it", process.pid, timeout)
            process.kill()
            process.wait()
