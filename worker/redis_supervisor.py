"""The embedded Redis, kept alive by the process that owns it.

The owner (serve, or a CLI command that started it) runs a thread that waits on its redis-server (so a dead one is
reaped, never left a zombie) and starts it again, from its append-only file, with a backoff of at most
`RESTART_BACKOFF_CAP` seconds. Where the server died of a failed write (the data directory's disk full), it is
started again once that disk has `MIN_FREE_BYTES` free (a server shut down on purpose, exit code 0, is started
again only by a supervisor that is told to: serve's). A server run by another process is watched instead, and
taken over when that process lets it go. Each change is told to `on_change` as one line (None: healthy again).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from typing import Callable

from .connection import EmbeddedRedis
from .errors import QueueUnavailable

__all__ = ["RedisSupervisor", "RESTART_BACKOFF_CAP", "MIN_FREE_BYTES", "disk_problem"]

log = logging.getLogger(__name__)

RESTART_BACKOFF_FIRST = 0.5
RESTART_BACKOFF_CAP = 10.0
"""Longest pause, in seconds, between two attempts to start the embedded Redis again."""
STEADY_SECONDS = 10.0
"""A server that dies sooner than this after its start is started again only after the (growing) backoff."""
MIN_FREE_BYTES = 4 * 2**20
"""Free bytes the data directory's disk needs before a Redis that died of a failed write is started again."""
_WRITE_FAILURES = ("Short write", "No space left on device", "Disk quota exceeded", "Read-only file system", "Error writing",
                   "AOF write error", "Can't open the append-only file", "Failed opening")


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _log_size(server: EmbeddedRedis) -> int:
    try:
        return (server.directory / "redis.log").stat().st_size
    except OSError:
        return 0


def disk_problem(server: EmbeddedRedis, since: int = 0) -> str | None:
    """A line naming the data directory and its free space, where the server's log (from byte `since` on: the
    run that ended) says a write failed, or the disk is (nearly) full; None otherwise."""
    try:
        free = shutil.disk_usage(server.directory).free
    except OSError as exc:
        return f"the embedded Redis's directory {server.directory} is unusable: {exc}"
    log_file = server.directory / "redis.log"
    tail = []
    if log_file.exists():
        with open(log_file, "rb") as handle:
            handle.seek(since)
            tail = handle.read().decode(errors="replace").splitlines()[-30:]
    failure = next((line.split(" # ", 1)[-1] for line in tail if any(m in line for m in _WRITE_FAILURES)), None)
    if free >= MIN_FREE_BYTES and failure is None:
        return None
    said = f" ({failure.strip()})" if failure else ""
    return (f"the embedded Redis cannot write to {server.directory}: {_size(free)} free{said}; "
            f"free some space there: Redis starts again from its append-only file by itself")


class RedisSupervisor:
    """Start (or adopt) the embedded Redis of `server`, and keep it running until `stop()`."""

    def __init__(self, server: EmbeddedRedis | None = None, on_change: Callable[[str | None], None] | None = None,
                 poll: float = 0.2, restart_after_shutdown: bool = True) -> None:
        """`restart_after_shutdown`: start the server again also where it was shut down on purpose (exit code 0:
        SHUTDOWN, SIGTERM), not only where it died; a short-lived command leaves that to whoever shut it down."""
        self.server = server or EmbeddedRedis()
        self.restart_after_shutdown = restart_after_shutdown
        self.on_change = on_change or (lambda reason: None)
        self.poll = poll
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._log_from = 0  # where the running server's lines begin in its log
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="seggpt-redis-supervisor", daemon=True)

    @property
    def owned(self) -> bool:
        return self.process is not None

    def start(self) -> "RedisSupervisor":
        """Start the server (QueueUnavailable if it cannot), or adopt the one running; then watch it."""
        self._log_from = _log_size(self.server)
        self.process = self.server.start_owned()
        self._thread.start()
        return self

    def _started(self) -> bool:
        """One attempt to start the server; True when it answers (ours or someone else's)."""
        with self._lock:
            if self._stopping.is_set():
                return False
            self._log_from = _log_size(self.server)
            self.process = self.server.start_owned()
            return True

    def _run(self) -> None:
        delay = RESTART_BACKOFF_FIRST
        down_since: float | None = None
        started_at = time.monotonic()
        while not self._stopping.is_set():
            process = self.process
            if process is not None:
                while process.poll() is None and not self._stopping.wait(self.poll):
                    pass
                code = process.wait()  # reaped: no zombie
                if self._stopping.is_set():
                    return
                self.process = None
                if code == 0 and not self.restart_after_shutdown:
                    log.info("the embedded Redis (pid %d) was shut down: not starting it again", process.pid)
                    return
                down_since = time.monotonic()
                problem = disk_problem(self.server, self._log_from)
                reason = problem or f"the embedded Redis (pid {process.pid}) exited with code {code}: starting it again"
                log.warning("%s", reason)
                self.on_change(reason)
                if time.monotonic() - started_at < STEADY_SECONDS:  # it keeps dying: back off
                    self._stopping.wait(delay)
                    delay = min(delay * 2, RESTART_BACKOFF_CAP)
                else:
                    delay = RESTART_BACKOFF_FIRST
            elif self.server._alive():
                if down_since is not None:  # someone else started it meanwhile
                    down_since = None
                    self.on_change(None)
                self._stopping.wait(max(self.poll, 1.0))
                continue
            elif down_since is None:
                down_since = time.monotonic()
                log.warning("the embedded Redis at %s is gone: starting it here", self.server.socket)
            problem = disk_problem(self.server, self._log_from)
            if problem is not None and shutil.disk_usage(self.server.directory).free < MIN_FREE_BYTES:
                self.on_change(problem)
                self._stopping.wait(self.poll)  # no use starting it before space is freed
                continue
            try:
                started = self._started()
            except (QueueUnavailable, OSError) as exc:
                reason = f"the embedded Redis does not start again (next try in {delay:.0f} s): {exc}"
                log.warning("%s", reason.splitlines()[0])
                self.on_change(problem or reason.splitlines()[0])
                self._stopping.wait(delay)
                delay = min(delay * 2, RESTART_BACKOFF_CAP)
                continue
            if started:
                self.restarts += 1
                log.warning("the embedded Redis answers again after %.1f s (%s)", time.monotonic() - down_since,
                            f"pid {self.process.pid}" if self.process else "run by another process")
                down_since, started_at = None, time.monotonic()
                self.on_change(None)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching, and stop the server if it is ours (SIGTERM: it writes its data and exits)."""
        with self._lock:
            self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("the embedded Redis did not stop within %.0f s: killing it", timeout)
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join(timeout)
