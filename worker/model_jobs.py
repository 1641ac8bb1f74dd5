"""Job functions, at stable import paths: RQ stores `worker.model_jobs.<name>` in each job.

Each takes one JSON payload and returns JSON. A segmentation chunk's payload is a `payloads.SegmentationChunk`.
With `options["k"]`, each target uses at most k prompts per label, chosen by `options["strategy"]` (see
`selection`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

from rq import get_current_job

from .defaults import BATCH_TARGETS, TASK_ATTEMPTS, TASK_BACKOFF
from .keys import chunk_done_key, chunk_owner_key, run_cancelled_key
from .errors import ChunkIncomplete, ChunkInterrupted, PluginMissing, SystemFault, TaskInputError, TransientError, WeightsMismatch
from .ownership import ensure_held, save_meta_if_held
from .metrics import count, observe
from .payloads import SegmentationChunk, TaskRef
from .runtime import get_runtime
from .task_io import load_image_bytes, make_sink

__all__ = ["segment_chunk", "noop", "with_backoff"]

log = logging.getLogger(__name__)
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


def noop(payload: dict) -> dict:
    """Does nothing: measures the queue's own overhead."""
    return {"echo": payload.get("echo")}


def _cancelled(connection, run: str | None) -> bool:
    return run is not None and bool(connection.exists(run_cancelled_key(run)))


def _selection(runtime, predictor, target, options: dict) -> dict:
    from .selection import select

    strategy = options.get("strategy", "similar")
    target_embedding = None
    prompt_embeddings = None
    if strategy == "similar":
        from seggpt_core.embedding import image_embedding

        prompt_embeddings = runtime.prompt_embeddings(predictor)
        target_embedding = image_embedding(_tensor_image(target.tensor))
    return select(predictor.annotated_by(), int(options["k"]), strategy, prompt_embeddings, target_embedding)


def _tensor_image(tensor):
    """The model-size RGB image back from a prepared (normalized) target tensor."""
    from PIL import Image

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


def segment_chunk(payload: dict) -> dict:
    """Segment every task of a chunk with one prompt set; store results through the payload's sink.

    A task that cannot be done (a corrupt image, a missing file) is recorded with its reason and the chunk goes
    on. Tasks that keep failing transiently make the chunk raise ChunkIncomplete after all others are done, so
    RQ re-queues it; tasks already stored are skipped on every re-run.
    """
    from seggpt_core import ImageError, SegGptError

    chunk = SegmentationChunk.from_json(payload)
    job = get_current_job()
    connection = job.connection
    runtime = get_runtime()
    loads_before = runtime.load_count
    started = time.perf_counter()
    runtime.load()
    if chunk.weights_digest is not None and chunk.weights_digest != runtime.weights_digest:
        raise WeightsMismatch(f"the chunk expects weights {chunk.weights_digest}; the only worker that took it has "
                              f"{runtime.weights_digest} ({runtime.settings.weights}): start a worker with the backend's weights")
    if chunk.options.get("dtype") not in (None, runtime.dtype_name):
        raise WeightsMismatch(f"the chunk expects dtype {chunk.options['dtype']}; the only worker that took it runs "
                              f"{runtime.dtype_name}: start a worker with the backend's SEGGPT_DTYPE")
    predictor = runtime.predictor_for(connection, chunk.prompts, chunk.options) if not chunk.prompts.empty else runtime.bare_predictor(chunk.options)
    sink = make_sink(connection, chunk.sink, chunk.namespace)
    if runtime.execution_id is not None and hasattr(sink, "owner_guard"):
        sink.owner_guard = (chunk_owner_key(job.id), runtime.execution_id)  # the write itself checks the claim
    tasks = [task.to_json() for task in chunk.tasks]
    options = chunk.options
    k = int(options.get("k") or 0)  # 0: every prompt that annotates a label
    finished = chunk_done_key(job.id)
    already = {member.decode() for member in connection.smembers(finished)}
    failed: dict[str, str] = {}
    bad_input: set[str] = set()  # failed because of the task's own image: final
    transient: dict[str, str] = {}
    job.meta.update({"total": len(tasks), "done": len(already), "failed": 0, "worker_pid": runtime.stats()["pid"]})
    # guarded like every later write: a run cut off before this point (a partition) comes back after the chunk was
    # finished elsewhere, and must not overwrite what that run saved
    save_meta_if_held(job, runtime.execution_id)
    pending = [task for task in tasks if str(task["id"]) not in already]
    done_before = len(already)
    batch = max(1, int(options.get("batch_targets") or BATCH_TARGETS))

    def pause(delay: float) -> None:
        # a retry's wait ends when the worker is told to stop: its Redis may have ended with it (a killed serve)
        if runtime.stop_requested.wait(delay):
            raise ChunkInterrupted("the worker is stopping: what is stored stays, the rest runs again")

    def retried(action: Callable[[], T]) -> T:
        return with_backoff(action, sleep=pause)

    def prepare(task: dict):
        data = retried(lambda: load_image_bytes(connection, task["image"]))
        return predictor.prepare_target(data, where=f"task {task['id']}")

    def from_marks(task: TaskRef) -> None:
        """A task the annotator marked: segmented from the marks in its own image (see `seggpt_core.marks`)."""
        from seggpt_core.marks import MarkError, segment_from_marks

        data = retried(lambda: load_image_bytes(connection, task.image))
        try:
            segmentation = segment_from_marks(predictor, data, task.marks)
        except MarkError as exc:
            raise TaskInputError(f"task {task.id}: {exc}") from None
        write(task.to_json(), segmentation)

    def still_ours() -> None:
        # a run whose chunk was taken over (it missed its heartbeats) writes nothing more: ChunkLost
        ensure_held(connection, job.id, runtime.execution_id)

    def write(task: dict, segmentation) -> None:
        still_ours()
        retried(lambda: sink.write(task, segmentation, finished))

    def record(task_id: str, future) -> None:
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
            already.add(task_id)

    # tasks the annotator marked (interactive, one at a time) first, then the batched rest
    marked = [task for task in chunk.tasks if task.marks and str(task.id) not in already]
    for task in marked:
        record(str(task.id), _InlineExecutor().submit(from_marks, task))
    pending = [task for task in pending if not task.get("marks")]

    # Three stages overlap: loader threads fetch and decode the next targets, this thread runs the forward on a
    # batch, a writer thread encodes and stores the previous batch (one writer keeps the sink single-threaded).
    # Where the forward already keeps every core busy (a CPU worker), they run in turn instead: threads beside it
    # only preempt torch's threads, and a parallel op waits for its slowest thread (bench/pipeline_vs_model.py).
    interrupted = False
    cancelled = _cancelled(connection, chunk.run)
    overlap = runtime.overlaps_host_work()
    job.meta["overlapped"] = overlap
    with _executor(overlap, 2, "seggpt-load") as loaders, _executor(overlap, 1, "seggpt-write") as writer:
        queue = deque((task, loaders.submit(prepare, task)) for task in ([] if cancelled else pending[: 2 * batch]))
        upcoming = iter(pending[2 * batch :])
        writes: list = []
        while queue:
            if runtime.stop_requested.is_set():
                interrupted = True  # what is stored stays; the rest runs again after the re-queue
                break
            if _cancelled(connection, chunk.run):
                cancelled = True  # what is stored stays; the rest is not done
                break
            still_ours()
            ready = []
            while queue and len(ready) < batch:
                task, future = queue.popleft()
                next_task = next(upcoming, None)
                if next_task is not None:
                    queue.append((next_task, loaders.submit(prepare, next_task)))
                if future.exception() is not None:
                    record(str(task["id"]), future)
                else:
                    ready.append((task, future.result()))
            if ready:
                batch_started = time.perf_counter()
                targets = [target for _, target in ready]
                selections = [_selection(runtime, predictor, t, options) for t in targets] if k else None
                try:
                    segmentations = predictor.predict_prepared(targets, selections)
                except SegGptError as exc:  # a whole batch refused (should not happen once targets are prepared)
                    for task, _ in ready:
                        failed[str(task["id"])] = str(exc)
                    segmentations = []
                for (task, _), segmentation in zip(ready, segmentations):
                    writes.append((str(task["id"]), writer.submit(write, task, segmentation)))
                observe(connection, "task_seconds", (time.perf_counter() - batch_started) / len(ready), len(ready))
            while writes and (writes[0][1].done() or not queue):
                record(*writes.pop(0))
            job.meta.update({"done": len(already), "failed": len(failed) + len(transient)})
            save_meta_if_held(job, runtime.execution_id)
        while writes:
            record(*writes.pop(0))
    flush = getattr(sink, "flush", None)  # sinks that write in bulk do it once per chunk
    if flush is not None:
        still_ours()
        retried(flush)
    count(connection, "tasks_done", len(already) - done_before)
    count(connection, "tasks_failed_input", len(bad_input))
    count(connection, "tasks_failed_system", len(failed) + len(transient) - len(bad_input))
    still_ours()
    job.meta.update({
        "failed_tasks": {**failed, **transient},
        "input_failures": sorted(bad_input),
        "seconds": round(time.perf_counter() - started, 3),
        "model_loads_in_job": runtime.load_count - loads_before,
        "worker": runtime.stats(),
        **({"cancelled": len(tasks) - len(already) - len(failed) - len(transient)} if cancelled else {}),
    })
    save_meta_if_held(job, runtime.execution_id)
    runtime.release_memory()
    if cancelled:
        return {"total": len(tasks), "done": len(already), "failed": failed, "cancelled": job.meta["cancelled"]}
    if interrupted:
        raise ChunkInterrupted(f"the worker is stopping: {len(already)} of {len(tasks)} task(s) stored, the rest re-queued")
    if transient:
        raise ChunkIncomplete(f"{len(transient)} task(s) kept failing transiently: {transient}")
    return {"total": len(tasks), "done": len(already), "failed": failed}
