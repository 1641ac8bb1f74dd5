"""The worker process: loads the model once, then runs jobs in-process (no fork per job, CUDA never forks).

Run one per GPU; any number of machines may share one Redis. A worker that dies mid-job (SIGKILL, power loss)
stops heartbeating; after `HEARTBEAT_INTERVAL + HEARTBEAT_GRACE` seconds any other worker's maintenance sweep
re-queues its job, which then skips the tasks already stored. Asked to stop (SIGTERM, SIGINT), a worker ends its
running chunk at the next batch and puts it back in its queue. A chunk that expects other weights (by digest) is
left for a matching worker. When Redis goes away, the worker waits for it with a capped backoff and resumes.

The same class serves the control queue (`seggpt-ls worker --control`): a worker without a model (its context has no
runtime), which never imports torch. A job queued with `yields_to` (the webhook work) starts once those queues hold
nothing queued or running, so every /predict goes first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time

import redis
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import StopRequested
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from .auto_dtype import required_dtype
from .context import ContextJob, JobContext
from .defaults import HEARTBEAT_GRACE, HEARTBEAT_INTERVAL, MAINTENANCE_INTERVAL, REDIS_BACKOFF_CAP, STOP_GRACE, WEIGHTS_WAIT, YIELD_WAIT
from .errors import PROGRAMMING_ERRORS, ChunkInterrupted, WeightsMismatch
from .keys import WORKER_INFO_GRACE, worker_info_key
from .model_jobs import segment_chunk
from .payloads import ChunkProgress, PayloadError, PredictionOptions, WorkerInfo
from .ownership import claim, holds
from .runtime import WorkerRuntime

__all__ = ["SegGptWorker", "run_worker", "expected_digest", "retry_by_type"]

log = logging.getLogger(__name__)
_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
PUBSUB_POLL = 0.5  # seconds the command-channel thread waits for a message before it looks at its stop flag


class _OncePerOutage(logging.Filter):
    """Lets the first 'cannot reach Redis' line of an outage through and drops the repeats: RQ logs one per
    reconnection attempt."""

    def __init__(self) -> None:
        super().__init__()
        self.announced = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "could not connect to Redis" not in record.getMessage():
            return True
        if self.announced:
            return False
        self.announced = True
        return True


_outage = _OncePerOutage()
logging.getLogger("rq.worker").addFilter(_outage)


def retry_by_type(job: Job, exc_type: type[BaseException] | None, exc: BaseException | None, traceback) -> None:
    """An RQ exception handler: the failure's type decides what is left of the job's retries, before RQ's
    `handle_job_failure` uses them. A stop is not the chunk's failure (it goes back without using a retry); other
    weights or a bug fail for good at once, with the reason."""
    if isinstance(exc, ChunkInterrupted):
        if job.retries_left is not None:
            job.retries_left += 1
    elif isinstance(exc, WeightsMismatch):
        job.retries_left = 0  # no worker with these weights came
    elif isinstance(exc, PROGRAMMING_ERRORS):
        job.retries_left = 0  # a re-run meets the same bug: once, loudly (RQ has logged the traceback just before)
        log.error("job %s failed on a programming error (%s: %s): not retried; its traceback is above and in the "
                  "failed job registry", job.id, type(exc).__name__, exc)


def _inside_chunk(frame) -> bool:
    """Whether a signal arrived while a segmentation chunk's own code ran."""
    while frame is not None:
        if frame.f_code is segment_chunk.__code__:  # by identity: the file's name ("tasks.py") once changed under it
            return True
        frame = frame.f_back
    return False


def expected_digest(job: Job) -> str | None:
    """The weights digest a segmentation chunk was queued for (None for jobs that need no model)."""
    return _payload(job).get("weights_digest")


def expected_dtype(job: Job) -> str | None:
    """The dtype a segmentation chunk was queued for ("auto": see `auto_dtype`; None: any)."""
    try:
        return PredictionOptions.from_json(_payload(job).get("options")).dtype
    except PayloadError:
        return None  # the chunk itself fails on it, naming the field


def _payload(job: Job) -> dict:
    args = job.args or ()
    return args[0] if args and isinstance(args[0], dict) else {}


class SegGptWorker(SimpleWorker):
    """An RQ SimpleWorker that keeps heartbeating while a job runs, with a short heartbeat TTL, so a dead worker
    is noticed in seconds rather than after the job timeout. Each job gets the worker's `context`."""

    job_class = ContextJob
    context: JobContext | None = None
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    weights_wait: float = WEIGHTS_WAIT
    yield_wait: float = YIELD_WAIT

    @property
    def runtime(self) -> WorkerRuntime | None:
        return self.context.runtime if self.context is not None else None

    @property
    def stop_requested(self) -> threading.Event | None:
        return self.runtime.stop_requested if self.runtime is not None else getattr(self, "_stop_event", None)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.push_exc_handler(retry_by_type)  # RQ hands it the exception itself, before handle_job_failure

    def request_stop(self, signum, frame):
        if self.stop_requested is not None:
            self.stop_requested.set()  # the running chunk stops at its next batch
        # ...or, where it does not get there in time (an image that is a minute away), where it is
        signal.signal(signal.SIGALRM, self._interrupt_chunk)
        signal.setitimer(signal.ITIMER_REAL, STOP_GRACE)
        super().request_stop(signum, frame)

    def _interrupt_chunk(self, signum, frame) -> None:
        # Only inside the chunk's own code: there RQ re-queues it (see handle_job_failure); elsewhere the stop
        # already happens at once. RQ's job timeout uses the same alarm, and cancels it when the job ends.
        if _inside_chunk(frame):
            raise ChunkInterrupted(f"the worker is stopping and the chunk did not reach its next batch within {STOP_GRACE:.0f} s: "
                                   "what is stored stays, the rest runs again")

    def request_force_stop(self, signum, frame):
        # A second Ctrl-C or SIGTERM: the chunk goes back to its queue now, rather than stay "started" until a
        # heartbeat expires (RQ's cold shutdown would leave it so)
        if _inside_chunk(frame):
            raise ChunkInterrupted("the worker was asked twice to stop: what is stored stays, the rest runs again")
        super().request_force_stop(signum, frame)

    def _stopping(self) -> bool:
        return self.stop_requested is not None and self.stop_requested.is_set()

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        # A stop asked for while a job ran must not go on to wait for the next one: RQ's dequeue retries a lost Redis
        # for up to `max_connection_wait_time` without looking at the stop, so a worker whose Redis ended with it
        # (both children of a killed serve) lingered ~30 s.
        if self._stopping():
            raise StopRequested()
        self._dequeuing = True
        try:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        finally:
            self._dequeuing = False

    def subscribe(self) -> None:
        # RQ polls the worker's command channel in waits of 60 s, and redis-py 8.2's PubSubWorkerThread.stop() joins
        # the thread: where a warm shutdown's unsubscribe raced the poll, the worker hung for up to 60 s before it
        # exited (a CI teardown gave up after 30 s). A short poll bounds that wait.
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(sleep_time=PUBSUB_POLL, daemon=True,
                                                       exception_handler=self._pubsub_exception_handler)

    def _taken_over(self, job: Job, execution) -> bool:
        """Whether another worker holds the job now (this one missed its heartbeats, and it was re-queued): then this
        run records nothing for it, neither a result nor a failure nor a retry; it only drops its own execution."""
        try:
            if execution is None or holds(self.connection, job.id, execution.id):
                return False
        except _REDIS_ERRORS:
            return False  # Redis is away: RQ's own bookkeeping fails next, and logs it
        log.warning("job %s is no longer this worker's (taken over after this worker missed its heartbeats): its "
                    "result and writes are dropped", job.id)
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()
        return True

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry, execution):
        if self._taken_over(job, execution):
            return
        super().handle_job_success(job, queue, started_job_registry, execution)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string="", execution=None):
        if self._taken_over(job, execution):
            return
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_interval + HEARTBEAT_GRACE

    def _publish_info(self) -> None:
        if self.context is None:
            return
        self._register_again_if_dropped()
        if self.runtime is not None:
            info = self.runtime.info(name=self.name, host=socket.gethostname(), queues=tuple(self.queue_names()))
        else:  # a control worker has no model to describe: it says only what it is
            info = WorkerInfo(pid=os.getpid(), device="none", weights="", role="control", name=self.name, host=socket.gethostname(),
                              queues=tuple(self.queue_names()))
        self.connection.set(worker_info_key(self.name), json.dumps(info.to_json()), ex=self.heartbeat_interval + WORKER_INFO_GRACE)

    def _register_again_if_dropped(self) -> None:
        """A worker cut off from Redis for longer than its registration lives (a partition) is dropped from RQ's
        worker registry by another worker's sweep; back on the network it works on, but nothing would list it
        (`seggpt-ls status`, anything that counts live workers). It registers again."""
        if self.connection.sismember(worker_registration.REDIS_WORKER_KEYS, self.key):
            return
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, pipeline)
            pipeline.expire(self.key, self.worker_ttl + 60)
            pipeline.execute()
        log.warning("worker %s had been dropped from the registry while it could not reach Redis: registered again", self.name)

    def heartbeat(self, timeout=None, pipeline=None):
        if getattr(self, "_dequeuing", False) and self._stopping():
            raise StopRequested()  # each turn of dequeue's retry loop starts here
        super().heartbeat(timeout, pipeline)
        self._publish_info()
        if _outage.announced:
            log.warning("Redis is reachable again: resuming")
            _outage.announced = False

    def _declines(self, job: Job, queue: Queue) -> bool:
        """Put a chunk for other weights back in its queue, for a matching worker; after `weights_wait` seconds
        without one, let it run: it then fails at once, naming both digests."""
        if self.runtime is None:
            return False
        expected, mine = expected_digest(job), self.runtime.weights_digest
        if expected is None or mine is None or expected == mine:
            # the dtype is part of the model version too: a bf16 worker leaves an fp32 chunk to an fp32 worker
            mine = self.runtime.dtype_name
            expected = required_dtype(self.connection, expected_dtype(job), self.runtime.weights_digest, mine)
            if expected is None or expected == mine:
                return False
        progress = ChunkProgress.from_meta(job.get_meta())
        if progress.weights_wait_since is None:
            progress.weights_wait_since = time.time()
        progress.declined_by[self.name] = mine
        job.meta.update(progress.to_meta())
        job.save_meta()
        if time.time() - progress.weights_wait_since >= self.weights_wait:
            return False
        if len(progress.declined_by) == 1 and not progress.declined_logged:
            log.warning("job %s expects %s, this worker has %s: left for a matching worker (up to %.0f s)",
                        job.id, expected, mine, self.weights_wait)
            progress.declined_logged = True
            job.meta.update(progress.to_meta())
            job.save_meta()
        queue.push_job_id(job.id)
        self.runtime.stop_requested.wait(1.0)  # not a hot loop while no matching worker is there
        return True

    def _yield_to_waiting_work(self, job: Job) -> None:
        """A job queued with `yields_to` (webhook work) starts once those queues hold nothing queued, being taken or
        running (every /predict goes first), or after `yield_wait` seconds (a queue no worker serves never blocks
        it for good)."""
        names = (job.meta or {}).get("yields_to") or ()
        if not names:
            return
        deadline = time.monotonic() + self.yield_wait
        queues = [Queue(name, connection=self.connection, serializer=JSONSerializer) for name in names]
        idle_looks = 0
        while time.monotonic() < deadline and not self._stopping():
            with self.connection.pipeline() as pipe:
                for queue in queues:
                    pipe.llen(queue.key)
                    pipe.llen(queue.intermediate_queue_key)
                    pipe.zcard(StartedJobRegistry(queue=queue).key)
                idle_looks = 0 if any(pipe.execute()) else idle_looks + 1
            # twice idle, 50 ms apart: a worker of several queues pops a job and registers it as started in two steps
            if idle_looks == 2:
                return
            time.sleep(0.05)

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._declines(job, queue):
            return
        if isinstance(job, ContextJob) and self.context is not None:
            job.context = self.context.for_job(job)
        execution = self.prepare_execution(job)
        claim(self.connection, job.id, execution.id)  # a re-run after a takeover: the earlier run is now a zombie
        if self.runtime is not None:
            self.runtime.execution_id = execution.id
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval):
                try:
                    if not holds(self.connection, job.id, execution.id):
                        return  # taken over: a beat would put this dead run back in the started registry
                    self.maintain_heartbeats(job, execution)
                    self._publish_info()
                except redis.RedisError as exc:  # a missed beat is not fatal; the next may succeed
                    if not _outage.announced:
                        log.warning("heartbeat failed: %s", exc)
                        _outage.announced = True

        thread = threading.Thread(target=beat, name="seggpt-heartbeat", daemon=True)
        thread.start()
        try:
            self._yield_to_waiting_work(job)  # in the started registry and heartbeating meanwhile: a death is noticed
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            thread.join()
            if self.runtime is not None:
                self.runtime.execution_id = None
        self.set_state("idle")


def _wait_for_redis(connection: redis.Redis, stop: threading.Event, cap: float = REDIS_BACKOFF_CAP) -> bool:
    """Ping until Redis answers (True) or a stop is asked for (False); one log line per outage, not per try."""
    delay, started, announced = 0.5, time.monotonic(), _outage.announced
    while not stop.is_set():
        try:
            connection.ping()
        except _REDIS_ERRORS as exc:
            if not announced:
                log.warning("cannot reach Redis (%s): retrying with a backoff of up to %.0f s", exc, cap)
                announced = _outage.announced = True
        else:
            if announced:
                log.warning("Redis is reachable again after %.0f s: resuming", time.monotonic() - started)
                _outage.announced = False
            return True
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.1)  # short naps: SIGTERM is honoured within a tenth of a second
        delay = min(delay * 2, cap)
    return False


def run_worker(
    context: JobContext,
    queues: list[str],
    *,
    burst: bool = False,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    maintenance_interval: int = MAINTENANCE_INTERVAL,
    weights_wait: float = WEIGHTS_WAIT,
    yield_wait: float = YIELD_WAIT,
) -> bool:
    """Load the model (where the context has a runtime: a model worker), then work the queues, handing every job
    `context`, until stopped (or until empty with `burst`). Survives Redis outages."""
    connection, runtime = context.connection, context.runtime
    stop = runtime.stop_requested if runtime is not None else threading.Event()
    if runtime is not None:
        started = time.perf_counter()
        runtime.load()
        log.info("model %s (digest %s) loaded on %s in %.1f s (pid %d)", runtime.settings.weights, runtime.weights_digest,
                 runtime.device, time.perf_counter() - started, os.getpid())
    else:
        log.info("control worker on %s (pid %d): no model", ", ".join(queues), os.getpid())
    worked = False
    while True:
        for number in (signal.SIGTERM, signal.SIGINT):  # RQ installs its own while it works
            signal.signal(number, lambda *_: stop.set())
        if not _wait_for_redis(connection, stop):
            return worked
        worker = SegGptWorker(
            [Queue(name, connection=connection, serializer=JSONSerializer) for name in queues],
            connection=connection,
            serializer=JSONSerializer,
            maintenance_interval=maintenance_interval,
            job_monitoring_interval=heartbeat_interval,
            worker_ttl=max(heartbeat_interval + HEARTBEAT_GRACE, 20),
        )
        worker.context = context
        worker._stop_event = stop
        worker.heartbeat_interval = heartbeat_interval
        worker.weights_wait = weights_wait
        worker.yield_wait = yield_wait
        worker.max_connection_wait_time = REDIS_BACKOFF_CAP
        try:
            worked |= worker.work(burst=burst, logging_level=logging.getLevelName(logging.getLogger().level))
        except _REDIS_ERRORS:
            pass  # Redis went away while the worker was between jobs or tearing down
        except StopRequested:
            return worked
        if burst or stop.is_set():
            return worked
        try:
            connection.ping()
        except _REDIS_ERRORS:
            continue  # an outage ended the loop: wait for Redis, then work again
        return worked  # RQ ended the loop for another reason, and has logged it
