"""The public face of the job layer: enqueue chunks, read progress, re-queue failures, report status.

Everything goes through RQ's JSON serializer: job arguments and results are plain JSON and nothing read from
Redis is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import uuid
from itertools import islice
from typing import Iterable, Iterator, Sequence, TypeVar

import redis
from rq import Queue, Retry, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from .defaults import CHUNK_SIZE, DEFAULT_QUEUE, FAILURE_TTL, JOB_RETRIES, JOB_TIMEOUT, RESULT_TTL
from .keys import RUN_CANCELLED_TTL, chunk_done_key, run_cancelled_key, worker_info_key
from .liveness import prune_dead_workers
from .metrics import counters
from .payloads import ChunkProgress, PayloadError, PredictionOptions, PromptSetRef, SegmentationChunk, SinkSpec, TaskRef, WorkerInfo

T = TypeVar("T")

log = logging.getLogger(__name__)

__all__ = ["get_queue", "chunked", "enqueue_call", "enqueue_segmentation", "enqueue_noop", "fetch_job", "job_failures", "input_failures", "cancel_run", "retry_failed", "queue_status", "read_worker_info"]


def get_queue(connection: redis.Redis, name: str = DEFAULT_QUEUE) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items (the last may be shorter), from any iterable: a generator is read as it goes."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def enqueue_segmentation(
    connection: redis.Redis,
    prompt_set: str | PromptSetRef | None,
    tasks: Sequence[dict | TaskRef],
    *,
    chunk_size: int = CHUNK_SIZE,
    queue: str = DEFAULT_QUEUE,
    namespace: str | None = None,
    sink: str | SinkSpec = "redis",
    options: PredictionOptions | None = None,
    extra: dict | None = None,
    at_front: bool = False,
    weights_digest: str | None = None,
    run: str | None = None,
) -> tuple[str, list[str]]:
    """Split `tasks` into chunks (`SegmentationChunk`s) and enqueue one job each. Returns (namespace, job ids).

    Each task is `{"id": ..., "image": {<source>: <value>}}`, with `"marks"` (`seggpt_core.marks.Mark`s) when
    it is segmented from the annotator's marks in its own image (then `prompt_set` may be None). A sink given by name gets `extra` as its params.
    With `weights_digest`, only a worker that loaded those weights runs the chunks (see `gpu_worker`); with `run`,
    `cancel_run(run)` stops them.
    """
    refs = []
    for index, task in enumerate(tasks):
        if isinstance(task, TaskRef):
            refs.append(task)
        elif "id" not in task or "image" not in task:
            raise ValueError(f"task {index} needs 'id' and 'image', got keys {sorted(task)}")
        else:
            refs.append(TaskRef(task["id"], task["image"], tuple(task.get("marks") or ())))
    prompts = prompt_set if isinstance(prompt_set, PromptSetRef) else PromptSetRef(prompt_set)
    spec = sink if isinstance(sink, SinkSpec) else SinkSpec(sink, dict(extra or {}))
    namespace = namespace or uuid.uuid4().hex
    rq_queue = get_queue(connection, queue)
    job_ids = []
    for chunk in chunked(refs, chunk_size):
        payload = SegmentationChunk(prompts, tuple(chunk), namespace, spec, options or PredictionOptions(), weights_digest, run)
        job = rq_queue.enqueue(
            "worker.model_jobs.segment_chunk",
            payload.to_json(),
            job_timeout=JOB_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=Retry(max=JOB_RETRIES),
            at_front=at_front,
            meta=ChunkProgress(total=len(chunk), namespace=namespace).to_meta(),
            description=f"segment {len(chunk)} task(s) of batch {namespace}",  # not the payload: keep logs small
        )
        job_ids.append(job.id)
    return namespace, job_ids


def enqueue_call(
    connection: redis.Redis,
    function: str,
    payload: dict,
    *,
    queue: str = DEFAULT_QUEUE,
    job_id: str | None = None,
    at_front: bool = False,
    description: str | None = None,
    yields_to: Sequence[str] = (),
) -> Job:
    """Enqueue any job function by import path with one JSON payload (used for the backend's own jobs). With
    `yields_to`, the worker that takes it starts it only once those queues hold nothing queued or running (see
    `gpu_worker`): webhook work waits behind every /predict."""
    return get_queue(connection, queue).enqueue(
        function,
        payload,
        job_id=job_id,
        at_front=at_front,
        job_timeout=JOB_TIMEOUT,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        retry=Retry(max=JOB_RETRIES),
        description=description or function.rsplit(".", 1)[-1],
        meta={"yields_to": list(yields_to)} if yields_to else None,
    )


def enqueue_noop(connection: redis.Redis, queue: str = DEFAULT_QUEUE, echo: object = None) -> Job:
    return get_queue(connection, queue).enqueue("worker.model_jobs.noop", {"echo": echo}, result_ttl=600)


def fetch_job(connection: redis.Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)


def cancel_run(connection: redis.Redis, run: str, job_ids: Sequence[str]) -> dict:
    """Stop a run: its queued chunks leave their queues, its running chunks stop at their next batch (what they
    stored stays). Returns how many jobs were taken off a queue and how many were running."""
    connection.set(run_cancelled_key(run), 1, ex=RUN_CANCELLED_TTL)
    dequeued = running = 0
    for job in Job.fetch_many(list(job_ids), connection=connection, serializer=JSONSerializer):
        if job is None:
            continue
        status = job.get_status(refresh=False)
        if status in ("queued", "deferred", "scheduled"):
            job.cancel()
            dequeued += 1
        elif status == "started":
            running += 1
    return {"dequeued": dequeued, "running": running}


def job_failures(connection: redis.Redis, job_ids: Sequence[str]) -> dict[str, str]:
    """Task id -> reason, for the tasks of these jobs that failed for good: those a chunk recorded, and every task
    not stored by a chunk that failed as a whole (its exception's last line is the reason)."""
    failures: dict[str, str] = {}
    for job in Job.fetch_many(list(job_ids), connection=connection, serializer=JSONSerializer):
        if job is None:
            continue
        failures.update(ChunkProgress.from_meta(job.get_meta(refresh=False)).failed_tasks)
        if job.get_status(refresh=False) == "failed":
            result = job.latest_result()
            lines = (result.exc_string or "").strip().splitlines() if result else []
            done = {member.decode() for member in connection.smembers(chunk_done_key(job.id))}
            for task in SegmentationChunk.from_json(job.args[0]).tasks:
                if str(task.id) not in done:
                    failures.setdefault(str(task.id), lines[-1] if lines else "the job failed")
    return failures


def input_failures(connection: redis.Redis, job_ids: Sequence[str]) -> set[str]:
    """The ids, among `job_failures`, of tasks that failed because of their own input (final); every other
    failure is the system's, and the task is left without a result so that a later run retries it."""
    ids: set[str] = set()
    for job in Job.fetch_many(list(job_ids), connection=connection, serializer=JSONSerializer):
        if job is not None:
            ids.update(ChunkProgress.from_meta(job.get_meta(refresh=False)).input_failures)
    return ids


def retry_failed(connection: redis.Redis, queue: str = DEFAULT_QUEUE) -> list[str]:
    """Re-queue every failed job of `queue`; returns their ids. Tasks they already stored are skipped."""
    registry = FailedJobRegistry(queue=get_queue(connection, queue))
    job_ids = registry.get_job_ids()
    for job_id in job_ids:
        registry.requeue(job_id)
    return job_ids


def queue_status(connection: redis.Redis, queues: Sequence[str] | None = None) -> dict:
    """Queues (queued, running, failed), running and failed jobs with their progress, and live workers."""
    names = list(queues or [q.name for q in Queue.all(connection=connection, serializer=JSONSerializer)] or [DEFAULT_QUEUE])
    status = {"queues": {}, "running": [], "failed": [], "workers": [], "tasks": counters(connection)}
    for name in names:
        queue = get_queue(connection, name)
        started = StartedJobRegistry(queue=queue).get_job_ids()
        failed = FailedJobRegistry(queue=queue).get_job_ids()
        status["queues"][name] = {"queued": queue.count, "running": len(started), "failed": len(failed)}
        for bucket, ids in (("running", started), ("failed", failed)):
            for job in Job.fetch_many(ids, connection=connection, serializer=JSONSerializer):
                if job is None:
                    continue
                progress = ChunkProgress.from_meta(job.get_meta(refresh=False))
                entry = {"id": job.id, "queue": name, "description": job.description or "", "done": progress.done,
                         "failed": progress.failed, "total": progress.total}
                if bucket == "failed":
                    entry["reason"] = (job.latest_result().exc_string.strip().splitlines() or [""])[-1] if job.latest_result() else ""
                status[bucket].append(entry)
    prune_dead_workers(connection)  # a dead worker is never reported live, nor waited on
    for worker in Worker.all(connection=connection):
        info = read_worker_info(connection, worker.name)
        status["workers"].append({
            "name": worker.name,
            "role": info.role if info else "model",  # "control": the backend's own jobs, no model
            "state": worker.get_state(),
            "queues": worker.queue_names(),
            "device": info.device if info else "?",
            "weights": info.weights if info else "?",
            "weights_digest": info.weights_digest if info else None,
            "host": (info.host if info else None) or worker.hostname,
            "model_loads": info.model_loads if info else None,
            "prompt_cache_limit_bytes": info.prompt_cache_limit_bytes if info else None,
            "max_batch_rows": info.max_batch_rows if info else None,
        })
    return status


def read_worker_info(connection: redis.Redis, name: str) -> WorkerInfo | None:
    """What the live worker `name` published (see `gpu_worker`); None when it published nothing (yet) or something
    this process cannot read."""
    raw = connection.get(worker_info_key(name))
    if not raw:
        return None
    try:
        return WorkerInfo.from_json(json.loads(raw))
    except (ValueError, PayloadError) as exc:
        log.warning("worker %s: unreadable worker info: %s", name, exc)
        return None
