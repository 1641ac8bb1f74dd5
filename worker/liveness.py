"""Which registered workers are alive: dead ones leave RQ's registry before anything counts on them.

RQ lists a worker until its key expires, up to `worker_ttl + 60` seconds after it died, and longer when Redis
itself was down meanwhile. A command that sees such a worker would wait for it and start none of its own. A worker
is dead when it ran on this host and its process is gone, or when its last heartbeat is older than DEAD_AFTER.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timezone
from typing import Sequence

import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from .defaults import HEARTBEAT_GRACE, HEARTBEAT_INTERVAL

__all__ = ["DEAD_AFTER", "prune_dead_workers", "requeue_abandoned", "requeue_lost"]

log = logging.getLogger(__name__)

DEAD_AFTER = 3 * (HEARTBEAT_INTERVAL + HEARTBEAT_GRACE)
"""Seconds without a heartbeat after which a worker on another host counts as dead (three missed TTLs)."""


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's process: alive
    return False


def prune_dead_workers(connection: redis.Redis) -> list[str]:
    """Unregister every dead worker (see the module); returns their names."""
    host, now, pruned = socket.gethostname(), datetime.now(timezone.utc), []
    for worker in Worker.all(connection=connection, serializer=JSONSerializer):
        heartbeat = worker.last_heartbeat
        if heartbeat is not None and heartbeat.tzinfo is None:
            heartbeat = heartbeat.replace(tzinfo=timezone.utc)
        silent = heartbeat is not None and (now - heartbeat).total_seconds() > DEAD_AFTER
        if (worker.hostname == host and worker.pid and _process_gone(worker.pid)) or silent:
            _expire_its_chunk(connection, worker)
            worker.register_death()
            pruned.append(worker.name)
            log.info("worker %s (pid %s on %s) is dead: removed from the registry", worker.name, worker.pid, worker.hostname)
    return pruned


def _expire_its_chunk(connection: redis.Redis, worker: Worker) -> None:
    """The chunk a dead worker held counts as abandoned now, not when its heartbeat would have lapsed: the next
    sweep (`requeue_abandoned`, or any worker's) puts it back in its queue."""
    job_id = worker.get_current_job_id()
    if not job_id:
        return
    for name in worker.queue_names():
        key = StartedJobRegistry(name, connection=connection).key
        for member in connection.zrange(key, 0, -1):
            if member.decode().split(":", 1)[0] == job_id:  # members are "<job id>:<execution id>"
                connection.zadd(key, {member: 0}, xx=True)


def requeue_abandoned(connection: redis.Redis, queues: Sequence[str]) -> None:
    """Put back on their queues the jobs whose worker stopped heartbeating (what a worker's sweep does, done now)."""
    for name in queues:
        StartedJobRegistry(queue=Queue(name, connection=connection, serializer=JSONSerializer)).cleanup()


def requeue_lost(connection: redis.Redis, job_ids: Sequence[str]) -> list[str]:
    """Jobs marked queued that neither their queue, nor its intermediate queue, nor its started registry holds (a
    worker killed between taking a job and starting it, whose intermediate entry was then dropped): pushed back on
    their queue. The places are read in the order a job moves through them, so a job moving on is never missed."""
    lost = []
    for job in Job.fetch_many(list(job_ids), connection=connection, serializer=JSONSerializer):
        if job is None or job.get_status(refresh=False) != JobStatus.QUEUED:
            continue
        queue = Queue(job.origin, connection=connection, serializer=JSONSerializer)
        if connection.lpos(queue.key, job.id) is not None or connection.lpos(queue.intermediate_queue_key, job.id) is not None:
            continue
        if job.id in queue.started_job_registry or job.get_status(refresh=True) != JobStatus.QUEUED:
            continue
        queue.push_job_id(job.id)
        lost.append(job.id)
        log.warning("job %s was marked queued but no queue held it (its worker died taking it): queued again", job.id)
    return lost
