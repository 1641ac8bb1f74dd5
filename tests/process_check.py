"""The suite leaves no process behind: pytest becomes the subreaper of everything the tests start (orphans of
killed parents and daemons that detach are re-parented to it), and the session fails, naming them, if any of
them is still alive at the end."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def live_descendants(root: int) -> list[int]:
    """Every living (not zombie) process below `root`, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] != "Z":
                children.setdefault(stat[0], []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"


def leftovers(grace: float = 10.0) -> dict[int, str]:
    """Processes still below this one after `grace` seconds (those shutting down get the time to finish)."""
    deadline = time.monotonic() + grace
    while True:
        pids = live_descendants(os.getpid())
        if not pids or time.monotonic() >= deadline:
            return {pid: command_line(pid) for pid in pids}
        time.sleep(0.25)


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def leftover_namespaces() -> list[str]:
    """Network namespaces the multi-host harness made in this process and did not remove; removed now (with every
    process inside them), so that they never pile up across runs."""
    from .multihost import delete_namespace, our_namespaces

    left = our_namespaces(os.getpid())
    for name in left:
        delete_namespace(name)
    return left
