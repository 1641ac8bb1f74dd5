"""Waiting for queued jobs to end: the one test of "ended" and the one polling loop every caller shares."""

from __future__ import annotations

import threading
import time
from typing import Callable, Mapping, Sequence, TypeVar

import redis

__all__ = ["ENDED_STATUSES", "STOPPING", "jobs_ended", "status_ended", "wait_until", "wait_for_jobs"]

T = TypeVar("T")

# rq statuses after which a job never runs again
ENDED_STATUSES = ("finished", "failed", "canceled", "stopped")

STOPPING = threading.Event()
"""Set when this process is asked to stop (serve on SIGTERM/SIGINT): every wait ends at once, as at its timeout,
so that no request holds a stopping server for its whole budget."""


def jobs_ended(progress: Mapping[str, int]) -> bool:
    """Whether every job of a `job_progress` summary has finished, failed or been cancelled."""
    return progress["jobs_finished"] + progress["jobs_failed"] + progress.get("jobs_cancelled", 0) == progress["jobs"]


def status_ended(status: str) -> bool:
    """Whether a job with this rq status is over, whatever its outcome."""
    return status in ENDED_STATUSES


def wait_until(poll: Callable[[], T], ended: Callable[[T], bool], interval: float = 0.5, timeout: float | None = None) -> T:
    """Call `poll` every `interval` seconds until `ended` holds for what it returns, `timeout` seconds have
    passed, or the process is stopping (`STOPPING`); return the last value."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        value = poll()
        if ended(value) or (deadline is not None and time.monotonic() >= deadline) or STOPPING.is_set():
            return value
        STOPPING.wait(interval)


def wait_for_jobs(connection: redis.Redis, job_ids: Sequence[str], *, interval: float = 0.2, timeout: float | None = None,
                  on_progress: Callable[[dict], None] | None = None) -> dict:
    """Poll `job_progress` until every job has ended (or `timeout`); returns the last summary."""
    from .queue import ProgressTracker

    tracker = ProgressTracker(connection, job_ids)

    def poll() -> dict:
        progress = tracker.poll()
        if on_progress is not None:
            on_progress(progress)
        return progress

    return wait_until(poll, jobs_ended, interval, timeout)
