"""Job functions, at stable import paths: RQ stores `worker.tasks.<name>` in each job.

Each takes one JSON payload and returns JSON. A segmentation chunk payload:

    {"prompt_set": "<digest>", "tasks": [{"id": "17", "image": {"path": "/data/a.jpg"}, ...}, ...],
     "options": {"embedding_type": "instance", "k": 5, "strategy": "similar"}, "sink": "redis",
     "namespace": "<batch id>"}

With `k`, each target uses at most k prompts per label, chosen by `strategy` (see `selection`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

from rq import get_current_job

from .defaults import BATCH_TARGETS, KEY_PREFIX, TASK_ATTEMPTS, TASK_BACKOFF
from .errors import ChunkIncomplete, TransientError
from .runtime import get_runtime
from .task_io import load_image_bytes, make_sink

__all__ = ["segment_chunk", "noop", "with_backoff", "done_key"]

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


def done_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:chunk:{job_id}:done"


def noop(payload: dict) -> dict:
    """Does nothing: measures the queue's own overhead."""
    return {"echo": payload.get("echo")}


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


def _executor(threaded: bool, workers: int, name: str):
    return ThreadPoolExecutor(workers, thread_name_prefix=name) if threaded else _InlineExecutor()


def segment_chunk(payload: dict) -> dict:
    """Segment every task of a chunk with one prompt set; store results through the payload's sink.

    A task that cannot be done (a corrupt image, a missing file) is recorded with its reason and the chunk goes
    on. Tasks that keep failing transiently make the chunk raise ChunkIncomplete after all others are done, so
    RQ re-queues it; tasks already stored are skipped on every re-run.
    """
    from seggpt_core import SegGptError

    job = get_current_job()
    connection = job.connection
    runtime = get_runtime()
    loads_before = runtime.load_count
    started = time.perf_counter()
    predictor = runtime.predictor_for(connection, payload["prompt_set"], payload.get("options"))
    sink = make_sink(connection, payload)
    tasks = payload["tasks"]
    options = payload.get("options") or {}
    k = int(options.get("k") or 0)  # 0: every prompt that annotates a label
    finished = done_key(job.id)
    already = {member.decode() for member in connection.smembers(finished)}
    failed: dict[str, str] = {}
    transient: dict[str, str] = {}
    job.meta.update({"total": len(tasks), "done": len(already), "failed": 0, "worker_pid": runtime.stats()["pid"]})
    job.save_meta()
    pending = [task for task in tasks if str(task["id"]) not in already]
    batch = max(1, int(options.get("batch_targets") or BATCH_TARGETS))

    def prepare(task: dict):
        data = with_backoff(lambda: load_image_bytes(connection, task["image"]))
        return predictor.prepare_target(data, where=f"task {task['id']}")

    def write(task: dict, segmentation) -> None:
        with_backoff(lambda: sink.write(task, segmentation, finished))

    def record(task_id: str, future) -> None:
        try:
            future.result()
        except TransientError as exc:
            transient[task_id] = f"gave up after {TASK_ATTEMPTS} attempts: {exc}"
        except (SegGptError, ValueError, KeyError) as exc:
            failed[task_id] = str(exc)
            log.warning("task %s failed: %s", task_id, exc)
        else:
            already.add(task_id)

    # Three stages overlap: loader threads fetch and decode the next targets, this thread runs the forward on a
    # batch, a writer thread encodes and stores the previous batch (one writer keeps the sink single-threaded).
    # Where the forward already keeps every core busy (a CPU worker), they run in turn instead: threads beside it
    # only preempt torch's threads, and a parallel op waits for its slowest thread (bench/pipeline_vs_model.py).
    overlap = runtime.overlaps_host_work()
    job.meta["overlapped"] = overlap
    with _executor(overlap, 2, "seggpt-load") as loaders, _executor(overlap, 1, "seggpt-write") as writer:
        queue = deque((task, loaders.submit(prepare, task)) for task in pending[: 2 * batch])
        upcoming = iter(pending[2 * batch :])
        writes: list = []
        while queue:
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
            while writes and (writes[0][1].done() or not queue):
                record(*writes.pop(0))
            job.meta.update({"done": len(already), "failed": len(failed) + len(transient)})
            job.save_meta()
    flush = getattr(sink, "flush", None)  # sinks that write in bulk do it once per chunk
    if flush is not None:
        with_backoff(flush)
    job.meta.update({
        "failed_tasks": {**failed, **transient},
        "seconds": round(time.perf_counter() - started, 3),
        "model_loads_in_job": runtime.load_count - loads_before,
        "worker": runtime.stats(),
    })
    job.save_meta()
    runtime.release_memory()
    if transient:
        raise ChunkIncomplete(f"{len(transient)} task(s) kept failing transiently: {transient}")
    return {"total": len(tasks), "done": len(already), "failed": failed}
