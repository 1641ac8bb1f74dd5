"""The worker process: loads the model once, then runs jobs in-process (no fork per job, CUDA never forks).

Run one per GPU; any number of machines may share one Redis. A worker that dies mid-job (SIGKILL, power loss)
stops heartbeating; after `HEARTBEAT_INTERVAL + HEARTBEAT_GRACE` seconds any other worker's maintenance sweep
re-queues its job, which then skips the tasks already stored.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from .defaults import HEARTBEAT_GRACE, HEARTBEAT_INTERVAL, KEY_PREFIX, MAINTENANCE_INTERVAL
from .runtime import ModelSettings, WorkerRuntime, set_runtime

__all__ = ["SegGptWorker", "run_worker", "worker_info_key"]

log = logging.getLogger(__name__)


def worker_info_key(name: str) -> str:
    return f"{KEY_PREFIX}:worker:{name}"


class SegGptWorker(SimpleWorker):
    """An RQ SimpleWorker that keeps heartbeating while a job runs, with a short heartbeat TTL, so a dead worker
    is noticed in seconds rather than after the job timeout."""

    runtime: WorkerRuntime | None = None
    heartbeat_interval: int = HEARTBEAT_INTERVAL

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_interval + HEARTBEAT_GRACE

    def _publish_info(self) -> None:
        if self.runtime is None:
            return
        info = {**self.runtime.stats(), "name": self.name, "host": socket.gethostname(), "queues": self.queue_names()}
        self.connection.set(worker_info_key(self.name), json.dumps(info), ex=self.heartbeat_interval + HEARTBEAT_GRACE)

    def heartbeat(self, timeout=None, pipeline=None):
        super().heartbeat(timeout, pipeline)
        self._publish_info()

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval):
                try:
                    self.maintain_heartbeats(job, execution)
                    self._publish_info()
                except redis.RedisError as exc:  # a missed beat is not fatal; the next may succeed
                    log.warning("heartbeat failed: %s", exc)

        thread = threading.Thread(target=beat, name="seggpt-heartbeat", daemon=True)
        thread.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            thread.join()
        self.set_state("idle")


def run_worker(
    connection: redis.Redis,
    queues: list[str],
    settings: ModelSettings,
    *,
    burst: bool = False,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    maintenance_interval: int = MAINTENANCE_INTERVAL,
) -> bool:
    """Load the model, then work the queues until stopped (or until empty with `burst`)."""
    runtime = WorkerRuntime(settings)
    set_runtime(runtime)
    started = time.perf_counter()
    runtime.load()
    log.info("model %s loaded on %s in %.1f s (pid %d)", settings.weights, runtime.device, time.perf_counter() - started, os.getpid())
    worker = SegGptWorker(
        [Queue(name, connection=connection, serializer=JSONSerializer) for name in queues],
        connection=connection,
        serializer=JSONSerializer,
        maintenance_interval=maintenance_interval,
        job_monitoring_interval=heartbeat_interval,
        worker_ttl=max(heartbeat_interval + HEARTBEAT_GRACE, 20),
    )
    worker.runtime = runtime
    worker.heartbeat_interval = heartbeat_interval
    return worker.work(burst=burst, logging_level=logging.getLevelName(logging.getLogger().level))
