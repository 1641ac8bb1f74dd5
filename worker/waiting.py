"""Waiting for queued jobs to end: the one test of "ended", the progress a wait reads, and the one polling loop every
caller shares. It knows nothing of enqueueing (`queue` builds on it, never the other way round)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Mapping, Sequence, TypeVar

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from .payloads import ChunkProgress

__all__ = ["ENDED_STATUSES", "STOPPING", "ProgressTracker", "job_progress", "jobs_ended", "status_ended", "wait_until", "wait_for_jobs"]

T = TypeVar("T")
log = logging.getLogger(__name__)

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


class ProgressTracker:
    """`job_progress` over many polls: a job that has ended is read one last time and then never again, so a poll
    of a 10,000-task bootstrap reads only its running and queued chunks."""

    def __init__(self, connection: redis.Redis, job_ids: Sequence[str]) -> None:
        self.connection = connection
        self.jobs = len(job_ids)
        self.pending = list(job_ids)
        self.ended = {"total": 0, "done": 0, "failed": 0, "jobs_finished": 0, "jobs_failed": 0, "cancelled": 0, "jobs_cancelled": 0}
        self.last: dict | None = None
        self.outage = False

    def poll(self) -> dict:
        """Summed progress over the jobs: total, done, failed tasks, and jobs finished / failed; once any was
        cancelled (`cancel_run`), also the tasks left undone by it and the jobs taken off their queue. While Redis
        cannot be reached (a restart), the last summary again: the jobs are safe in Redis, and the waiter waits on."""
        try:
            summary = self._poll()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if self.last is None:
                raise
            if not self.outage:
                log.warning("cannot reach Redis (%s): waiting for it to come back; the queued jobs are kept there", exc)
                self.outage = True
            return dict(self.last)
        if self.outage:
            log.warning("Redis is reachable again")
            self.outage = False
        self.last = summary
        return summary

    def _poll(self) -> dict:
        summary = dict(self.ended)
        still = []
        for job_id, job in zip(self.pending, Job.fetch_many(self.pending, connection=self.connection, serializer=JSONSerializer)):
            if job is None:
                continue  # expired: it no longer counts
            part = dict.fromkeys(summary, 0)
            progress = ChunkProgress.from_meta(job.get_meta(refresh=False))
            part.update(total=progress.total, done=progress.done, failed=progress.failed)
            part["cancelled"] = progress.cancelled or 0  # a chunk that stopped midway
            status = job.get_status(refresh=False)
            part["jobs_finished"] = int(status == "finished")
            part["jobs_failed"] = int(status == "failed")
            if status in ("canceled", "stopped"):  # taken off its queue before it ran
                part["jobs_cancelled"] = 1
                part["cancelled"] += part["total"] - part["done"] - part["failed"]
            for key, value in part.items():
                summary[key] += value
            if status_ended(status):
                for key, value in part.items():
                    self.ended[key] += value
            else:
                still.append(job_id)
        self.pending = still
        summary["jobs"] = self.jobs
        if not (summary["cancelled"] or summary["jobs_cancelled"]):
            del summary["cancelled"], summary["jobs_cancelled"]
        return summary


def job_progress(connection: redis.Redis, job_ids: Sequence[str]) -> dict:
    """Summed progress over jobs, read once (see `ProgressTracker`)."""
    return ProgressTracker(connection, job_ids).poll()


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
    tracker = ProgressTracker(connection, job_ids)

    def poll() -> dict:
        progress = tracker.poll()
        if on_progress is not None:
            on_progress(progress)
        return progress

    return wait_until(poll, jobs_ended, interval, timeout)
