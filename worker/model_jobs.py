"""Job functions, at stable import paths: RQ stores `worker.model_jobs.<name>` in each job.

Each takes one JSON payload and the worker's `JobContext`, and returns JSON. A segmentation chunk's payload is a `payloads.SegmentationChunk`.
With `options.k`, each target uses at most k prompts per label, chosen by `options.strategy` (see `selection`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

import redis
from PIL import Image

from seggpt_core.embedding import image_embedding
from seggpt_core.errors import ImageError, SegGptError
from seggpt_core.marks import MarkError, segment_from_marks

from .auto_dtype import required_dtype
from .defaults import BATCH_TARGETS, TASK_ATTEMPTS, TASK_BACKOFF
from .keys import chunk_done_key, chunk_owner_key, run_cancelled_key
from .errors import ChunkIncomplete, ChunkInterrupted, ChunkLost, PluginMissing, SystemFault, TaskInputError, TransientError, WeightsMismatch
from .ownership import ensure_held, owned_by, save_meta_if_held, taken_over
from .metrics import count, observe_all
from .payloads import ChunkProgress, PredictionOptions, SegmentationChunk, TaskRef
from .context import JobContext
from .selection import select

__all__ = ["segment_chunk", "ChunkRun", "noop", "with_backoff"]

log = logging.getLogger(__name__)

# While the forwards run, a chunk's watcher thread asks every WATCH_EVERY seconds whether its run was cancelled or
# the chunk taken over, and saves its progress at most every PROGRESS_EVERY seconds (at the chunk's start and end
# the run itself saves it): the forward's loop waits for no round trip to a worker host's Redis, which is across a
# network on a head that may be busy (bench/multihost.py: 6 to 10 ms a trip, 6 trips a batch before).
PROGRESS_EVERY = 1.0
WATCH_EVERY = 0.25
T = TypeVar("T")


def with_backoff(action: Callable[[], T], attempts: int = TASK_ATTEMPTS, first_delay: float = TASK_BACKOFF, sleep=time.sleep) -> T:
    """Run `action`, retrying TransientError with exponential backoff; the last error propagates."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except TransientError as exc:
            if attempt == attempts:
                raise
            log.info("transient failure (attempt %d/%d), retrying in %.1f s: %s", attempt, attempts, delay, exc)
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def noop(payload: dict, context: JobContext) -> dict:
    """Does nothing: measures the queue's own overhead."""
    return {"echo": payload.get("echo")}


def _cancelled(connection, run: str | None) -> bool:
    return run is not None and bool(connection.exists(run_cancelled_key(run)))


def _selection(runtime, predictor, target, options: PredictionOptions) -> dict:
    strategy = options.strategy
    target_embedding = None
    prompt_embeddings = None
    if strategy == "similar":
        prompt_embeddings = runtime.prompt_embeddings(predictor)
        target_embedding = image_embedding(_tensor_image(target.tensor))
    return select(predictor.annotated_by(), options.k, strategy, prompt_embeddings, target_embedding)


def _tensor_image(tensor):
    """The model-size RGB image back from a prepared (normalized) target tensor."""
    # torch: the control worker imports this module (through gpu_worker) and never loads it (see backend/__init__.py)
    from seggpt_core.transforms import denormalize

    return Image.fromarray(denormalize(tensor[None])[0].astype("uint8"))


class _InlineExecutor:
    """The `submit` of an executor, run at once in the calling thread."""

    def __enter__(self) -> "_InlineExecutor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # delivered through the future, as a pool would
            future.set_exception(exc)
        return future


class _Pool(ThreadPoolExecutor):
    def __exit__(self, exc_type, exc, tb) -> bool:
        # an interrupted chunk does not wait for a fetch that hangs: it goes back to its queue now
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)
        return False


def _executor(threaded: bool, workers: int, name: str):
    return _Pool(workers, thread_name_prefix=name) if threaded else _InlineExecutor()


def segment_chunk(payload: dict, context: JobContext) -> dict:
    """Segment every task of a chunk with one prompt set; store results through the payload's sink.

    A task that cannot be done (a corrupt image, a missing file) is recorded with its reason and the chunk goes
    on. Tasks that keep failing transiently make the chunk raise ChunkIncomplete after all others are done, so
    RQ re-queues it; tasks already stored are skipped on every re-run.
    """
    chunk = SegmentationChunk.from_json(payload)
    return ChunkRun(chunk, context).run()


class ChunkRun:
    """One run of a segmentation chunk, in three stages: `load` (the model, the prompts, the sink, what an earlier
    run stored), `paint` (the forwards; each result goes to the sink as it comes) and `write` (the sink's flush,
    the counters, the chunk's progress and its outcome). The state the stages share is held here."""

    def __init__(self, chunk: SegmentationChunk, context: JobContext) -> None:
        runtime = context.require_runtime()
        self.chunk, self.context, self.job, self.connection, self.runtime = chunk, context, context.job, context.connection, runtime
        self.options = chunk.options
        self.started = time.perf_counter()
        self.loads_before = runtime.load_count
        self.finished = chunk_done_key(self.job.id)
        self.predictor = None
        self.sink = None
        self.stored: set[str] = set()  # task ids stored, by this run or an earlier one
        self.stored_before = 0
        self.failed: dict[str, str] = {}
        self.bad_input: set[str] = set()  # failed because of the task's own image: final
        self.transient: dict[str, str] = {}
        self.interrupted = False
        self.cancelled = False
        self.progress = ChunkProgress.from_meta(self.job.meta)
        self.observed: list[tuple[float, int]] = []  # (seconds per task, tasks) of each forward
        self.progress_lock = threading.Lock()
        self.progress_saved = 0.0  # when the progress was last saved (perf_counter)
        self.lost_seen = self.cancel_seen = False  # set by `watch`, which also saves the progress while the forwards run

    def run(self) -> dict:
        with self.stage("load"):
            self.load()
        self.paint()
        return self.write()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            with self.progress_lock:
                self.progress.stages[name] = round(self.progress.stages.get(name, 0.0) + time.perf_counter() - started, 4)

    # -- load ----------------------------------------------------------------------------------------------------

    def load(self) -> None:
        """The model and the prompts on this worker, the sink, and the tasks an earlier run already stored."""
        chunk, runtime, connection = self.chunk, self.runtime, self.connection
        runtime.load()
        if chunk.weights_digest is not None and chunk.weights_digest != runtime.weights_digest:
            raise WeightsMismatch(f"the chunk expects weights {chunk.weights_digest}; the only worker that took it has "
                                  f"{runtime.weights_digest} ({runtime.settings.weights}): start a worker with the backend's weights")
        dtype = required_dtype(connection, self.options.dtype, runtime.weights_digest, runtime.dtype_name)
        if dtype not in (None, runtime.dtype_name):
            meaning = f" (what SEGGPT_DTYPE=auto means for these weights, since a {dtype} worker ran them)" if self.options.dtype == "auto" else ""
            raise WeightsMismatch(f"the chunk expects dtype {dtype}{meaning}; the only worker that took it runs "
                                  f"{runtime.dtype_name}: start a worker with the backend's SEGGPT_DTYPE, or set SEGGPT_DTYPE "
                                  "for a fleet that mixes devices")
        self.predictor = (runtime.predictor_for(connection, chunk.prompts, self.options) if not chunk.prompts.empty
                          else runtime.bare_predictor(self.options))
        self.sink = self.context.make_sink(chunk.sink, chunk.namespace)
        if runtime.execution_id is not None and hasattr(self.sink, "owner_guard"):
            self.sink.owner_guard = (chunk_owner_key(self.job.id), runtime.execution_id)  # the write itself checks the claim
        self.stored = {member.decode() for member in connection.smembers(self.finished)}
        self.stored_before = len(self.stored)
        self.progress.total, self.progress.done, self.progress.failed = len(chunk.tasks), len(self.stored), 0
        self.progress.worker_pid = runtime.info().pid
        # guarded like every later write: a run cut off before this point (a partition) comes back after the chunk was
        # finished elsewhere, and must not overwrite what that run saved
        self.save_progress()

    # -- paint ---------------------------------------------------------------------------------------------------

    def paint(self) -> None:
        """Tasks the annotator marked (interactive, one at a time) first, then the batched rest."""
        for task in [task for task in self.chunk.tasks if task.marks and str(task.id) not in self.stored]:
            self.record(str(task.id), _InlineExecutor().submit(self.from_marks, task))
        pending = [task.to_json() for task in self.chunk.tasks if not task.marks and str(task.id) not in self.stored]
        self.paint_batches(pending)

    def paint_batches(self, pending: list[dict]) -> None:
        """Three stages overlap: loader threads fetch and decode the next targets, this thread runs the forward on
        a batch, writer threads encode and store the previous batch (one, unless the sink says how many may write
        at once).
        Where the forward already keeps every core busy (a CPU worker), they run in turn instead: threads beside it
        only preempt torch's threads, and a parallel op waits for its slowest thread (bench/pipeline_vs_model.py)."""
        batch = self.options.batch_targets or BATCH_TARGETS
        self.cancelled = _cancelled(self.connection, self.chunk.run)
        overlap = self.runtime.overlaps_host_work()
        self.progress.overlapped = overlap
        if hasattr(self.sink, "overlapped"):
            self.sink.overlapped = overlap  # a sink may then write each result as it comes (see task_io.Sink)
        writers = getattr(self.sink, "writers", 1)
        stop_watching = threading.Event()
        watcher = threading.Thread(target=self.watch, args=(stop_watching,), name="seggpt-watch", daemon=True)
        watcher.start()
        try:
            self.pipeline(pending, batch, overlap, writers)
        finally:
            stop_watching.set()
            watcher.join()

    def pipeline(self, pending: list[dict], batch: int, overlap: bool, writers: int) -> None:
        with _executor(overlap, 2, "seggpt-load") as loaders, _executor(overlap, writers, "seggpt-write") as writer:
            queue = deque((task, loaders.submit(self.prepare, task)) for task in ([] if self.cancelled else pending[: 2 * batch]))
            upcoming = iter(pending[2 * batch :])
            writes: list = []
            while queue:
                if self.runtime.stop_requested.is_set():
                    self.interrupted = True  # what is stored stays; the rest runs again after the re-queue
                    break
                if self.lost_seen:
                    raise taken_over(self.job.id)
                if self.cancel_seen:
                    self.cancelled = True  # what is stored stays; the rest is not done
                    break
                ready = []
                while queue and len(ready) < batch:
                    task, future = queue.popleft()
                    next_task = next(upcoming, None)
                    if next_task is not None:
                        queue.append((next_task, loaders.submit(self.prepare, next_task)))
                    with self.stage("inputs"):
                        future.exception()  # done, failed or not
                    if future.exception() is not None:
                        self.record(str(task["id"]), future)
                    else:
                        ready.append((task, future.result()))
                if ready:
                    with self.stage("forward"):
                        writes.extend(self.forward(ready, writer))
                while writes and writes[0][1].done():
                    self.record(*writes.pop(0))
                self.progress.done, self.progress.failed = len(self.stored), len(self.failed) + len(self.transient)
            with self.stage("writes"):
                while writes:
                    self.record(*writes.pop(0))

    def forward(self, ready: list[tuple[dict, object]], writer) -> list[tuple[str, Future]]:
        """One forward over prepared targets; each segmentation is handed to the writer."""
        batch_started = time.perf_counter()
        targets = [target for _, target in ready]
        k = self.options.k  # 0: every prompt that annotates a label
        selections = [_selection(self.runtime, self.predictor, t, self.options) for t in targets] if k else None
        try:
            segmentations = self.predictor.predict_prepared(targets, selections)
        except SegGptError as exc:  # a whole batch refused (should not happen once targets are prepared)
            for task, _ in ready:
                self.failed[str(task["id"])] = str(exc)
            segmentations = []
        writes = [(str(task["id"]), writer.submit(self.store, task, segmentation)) for (task, _), segmentation in zip(ready, segmentations)]
        self.observed.append(((time.perf_counter() - batch_started) / len(ready), len(ready)))  # sent at the chunk's end
        return writes

    def pause(self, delay: float) -> None:
        # a retry's wait ends when the worker is told to stop: its Redis may have ended with it (a killed serve)
        if self.runtime.stop_requested.wait(delay):
            raise ChunkInterrupted("the worker is stopping: what is stored stays, the rest runs again")

    def retried(self, action: Callable[[], T]) -> T:
        return with_backoff(action, sleep=self.pause)

    def helper_cpu(self, name: str, started: float) -> None:
        """Add the calling thread's CPU since `started` (time.thread_time) to the chunk's account under `name`."""
        spent = time.thread_time() - started
        with self.progress_lock:
            self.progress.helper_cpu[name] = round(self.progress.helper_cpu.get(name, 0.0) + spent, 4)

    def prepare(self, task: dict):
        started = time.thread_time()
        try:
            data = self.retried(lambda: self.context.load_image_bytes(task["image"]))
            return self.predictor.prepare_target(data, where=f"task {task['id']}")
        finally:
            self.helper_cpu("load", started)

    def from_marks(self, task: TaskRef) -> None:
        """A task the annotator marked: segmented from the marks in its own image (see `seggpt_core.marks`)."""
        data = self.retried(lambda: self.context.load_image_bytes(task.image))
        try:
            segmentation = segment_from_marks(self.predictor, data, task.marks)
        except MarkError as exc:
            raise TaskInputError(f"task {task.id}: {exc}") from None
        self.store(task.to_json(), segmentation)

    def still_ours(self) -> None:
        # a run whose chunk was taken over (it missed its heartbeats) writes nothing more: ChunkLost
        ensure_held(self.connection, self.job.id, self.runtime.execution_id)

    def watch(self, stop: threading.Event) -> None:
        """Look up, every WATCH_EVERY seconds, whether the run was cancelled or the chunk taken over, for the
        forward's loop to see between batches without waiting for a round trip (each write checks the claim
        itself before it lands)."""
        while not stop.wait(WATCH_EVERY):
            try:
                cancelled = self.cancelled_or_lost()
                if not cancelled and time.perf_counter() - self.progress_saved >= PROGRESS_EVERY:
                    self.save_progress()
            except ChunkLost:
                self.lost_seen = True
                return
            except redis.RedisError:
                continue  # the writes meet the outage too, and retry
            if cancelled:
                self.cancel_seen = True
                return

    def cancelled_or_lost(self) -> bool:
        """Whether the chunk's run was cancelled; ChunkLost if it was taken over. One round trip."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.get(chunk_owner_key(self.job.id))
            if self.chunk.run is not None:
                pipe.exists(run_cancelled_key(self.chunk.run))
            owner, *cancelled = pipe.execute()
        if not owned_by(owner, self.runtime.execution_id):
            raise taken_over(self.job.id)
        return bool(cancelled and cancelled[0])

    def store(self, task: dict, segmentation) -> None:
        started = time.thread_time()
        try:
            self.still_ours()
            self.retried(lambda: self.sink.write(task, segmentation, self.finished))
        finally:
            self.helper_cpu("write", started)

    def record(self, task_id: str, future) -> None:
        failed, bad_input, transient = self.failed, self.bad_input, self.transient
        try:
            future.result()
        except TransientError as exc:
            transient[task_id] = f"gave up after {TASK_ATTEMPTS} attempts: {exc}"
        except SystemFault as exc:
            failed[task_id] = str(exc)  # logged once where it was raised, not once per task
        except (TaskInputError, SegGptError, PluginMissing) as exc:
            # only the project's own task errors: a bug (KeyError, TypeError, ...) fails the chunk once, loudly
            failed[task_id] = str(exc)
            if isinstance(exc, (ImageError, TaskInputError)):
                bad_input.add(task_id)
            log.warning("task %s failed (%s): %s", task_id, "its input" if task_id in bad_input else "system", exc)
        else:
            self.stored.add(task_id)

    def save_progress(self) -> None:
        """Saved by this thread before and after the forwards, by the watcher while they run."""
        with self.progress_lock:  # the stages and CPU accounts change from other threads meanwhile
            self.job.meta.update(self.progress.to_meta())
            meta = self.job._serialize_meta()
        save_meta_if_held(self.job, self.runtime.execution_id, meta)
        self.progress_saved = time.perf_counter()

    # -- write ---------------------------------------------------------------------------------------------------

    def write(self) -> dict:
        """The sink's bulk write, the counters and the chunk's final progress; then its outcome: a result, or the
        exception that sends it back to its queue."""
        connection, runtime, progress = self.connection, self.runtime, self.progress
        flush = getattr(self.sink, "flush", None)  # sinks that write in bulk do it once per chunk
        if flush is not None:
            with self.stage("write"):
                self.still_ours()
                self.retried(flush)
        stored, failed, transient, total = self.stored, self.failed, self.transient, len(self.chunk.tasks)
        observe_all(connection, "task_seconds", self.observed)
        count(connection, "tasks_done", len(stored) - self.stored_before)
        count(connection, "tasks_failed_input", len(self.bad_input))
        count(connection, "tasks_failed_system", len(failed) + len(transient) - len(self.bad_input))
        self.still_ours()
        progress.done, progress.failed = len(stored), len(failed) + len(transient)
        progress.failed_tasks = {**failed, **transient}
        progress.input_failures = sorted(self.bad_input)
        progress.seconds = round(time.perf_counter() - self.started, 3)
        log.info("chunk %s: %d task(s) in %.2f s (%s)", self.job.id, total, progress.seconds,
                 ", ".join(f"{name} {seconds:.2f} s" for name, seconds in progress.stages.items()))
        progress.model_loads_in_job = runtime.load_count - self.loads_before
        progress.worker = runtime.stats()
        if self.cancelled:
            progress.cancelled = total - len(stored) - len(failed) - len(transient)
        self.save_progress()
        runtime.release_memory()
        if self.cancelled:
            return {"total": total, "done": len(stored), "failed": failed, "cancelled": progress.cancelled}
        if self.interrupted:
            raise ChunkInterrupted(f"the worker is stopping: {len(stored)} of {total} task(s) stored, the rest re-queued")
        if transient:
            raise ChunkIncomplete(f"{len(transient)} task(s) kept failing transiently: {transient}")
        return {"total": total, "done": len(stored), "failed": failed}
