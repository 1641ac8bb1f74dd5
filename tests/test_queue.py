"""The job layer on a real Redis (the embedded server) with real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from seggpt_core import Prompt, SegGptPredictor, load_model
from worker import (
    EmbeddedRedis,
    TransientError,
    enqueue_segmentation,
    fetch_job,
    get_queue,
    job_progress,
    load_prompt_set,
    results_key,
    store_blob,
    store_prompt_set,
)
from worker.codec import b64png_to_mask
from worker.payloads import SinkSpec
from worker.prompt_sets import prompt_set_key
from worker.model_jobs import with_backoff

from .queue_helpers import run_burst_worker, scene_prompt, start_worker, target_bytes, wait_for, worker_env, write_counts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model_dir")
    yield directory
    EmbeddedRedis(directory / "redis").stop()


@pytest.fixture(scope="module")
def redis_conn(model_dir):
    return EmbeddedRedis(model_dir / "redis").connect()


@pytest.fixture
def queue_name():
    return f"test-{uuid.uuid4().hex[:8]}"


def _results(connection, namespace: str) -> dict:
    return {k.decode(): json.loads(v) for k, v in connection.hgetall(results_key(namespace)).items()}


def test_prompt_sets_are_content_addressed(redis_conn):
    first = store_prompt_set(redis_conn, [scene_prompt(1)])
    assert store_prompt_set(redis_conn, [scene_prompt(1)]) == first
    assert store_prompt_set(redis_conn, [scene_prompt(2)]) != first
    prompts = load_prompt_set(redis_conn, first)
    assert set(prompts[0].masks) == {"disc", "star"}
    assert np.array_equal(prompts[0].masks["disc"], scene_prompt(1).masks["disc"])


def test_round_trip_of_real_inference_through_a_worker_process(redis_conn, model_dir, queue_name, tmp_path):
    digest = store_prompt_set(redis_conn, [scene_prompt(1)])
    path = tmp_path / "on disk.png"
    path.write_bytes(target_bytes(21, size=(77, 131)))
    tasks = [
        {"id": "a", "image": store_blob(redis_conn, target_bytes(20))},
        {"id": "b", "image": {"path": str(path)}},
        {"id": "c", "image": store_blob(redis_conn, target_bytes(22, size=(64, 50)))},
    ]
    namespace, job_ids = enqueue_segmentation(redis_conn, digest, tasks, chunk_size=2, queue=queue_name)
    assert len(job_ids) == 2
    result = run_burst_worker(model_dir, queue_name)
    assert result.returncode == 0, result.stdout + result.stderr
    stored = _results(redis_conn, namespace)
    assert set(stored) == {"a", "b", "c"}
    # the same weights in this process give the same masks: nothing was lost or reshaped on the way
    predictor = SegGptPredictor(load_model("random:tiny", device="cpu"))
    predictor.set_prompts([Prompt(scene_prompt(1).image, scene_prompt(1).masks)])
    expected = predictor.predict([target_bytes(20), path.read_bytes(), target_bytes(22, size=(64, 50))])
    for task_id, segmentation in zip("abc", expected):
        assert (stored[task_id]["height"], stored[task_id]["width"]) == segmentation.size
        for label in ("disc", "star"):
            mask = b64png_to_mask(stored[task_id]["labels"][label]["mask"])
            assert np.array_equal(mask, segmentation.masks[label]), (task_id, label)
            assert stored[task_id]["labels"][label]["score"] == pytest.approx(segmentation.scores[label], abs=1e-5)
    progress = job_progress(redis_conn, job_ids)
    assert progress == {"total": 3, "done": 3, "failed": 0, "jobs": 2, "jobs_finished": 2, "jobs_failed": 0}
    assert fetch_job(redis_conn, job_ids[0]).return_value() == {"total": 2, "done": 2, "failed": {}}


def test_model_is_loaded_once_across_jobs(redis_conn, model_dir, queue_name):
    digest = store_prompt_set(redis_conn, [scene_prompt(3)])
    tasks = [{"id": i, "image": store_blob(redis_conn, target_bytes(30 + i))} for i in range(8)]
    _, job_ids = enqueue_segmentation(redis_conn, digest, tasks, chunk_size=2, queue=queue_name)
    assert run_burst_worker(model_dir, queue_name).returncode == 0
    metas = [fetch_job(redis_conn, job_id).get_meta() for job_id in job_ids]
    assert len({m["worker"]["pid"] for m in metas}) == 1  # one process ran them all
    assert all(m["worker"]["model_loads"] == 1 for m in metas)  # loaded once, before the first job
    assert all(m["model_loads_in_job"] == 0 for m in metas)  # no job paid for a load
    assert metas[-1]["worker"]["prompt_preparations"] == 1  # the prompt set was prepared once per worker


CORES = len(os.sched_getaffinity(0))


# One torch thread leaves cores free, so loading and writing overlap the forward in threads; a torch thread per core
# makes them run in turn in the job's thread. Either way a bad task fails alone.
@pytest.mark.fault
@pytest.mark.parametrize("torch_threads", sorted({1, CORES}))
def test_fault_corrupt_image_in_a_chunk(redis_conn, model_dir, queue_name, torch_threads):
    digest = store_prompt_set(redis_conn, [scene_prompt(4)])
    tasks = [{"id": f"t{i}", "image": store_blob(redis_conn, target_bytes(40 + i))} for i in range(3)]
    tasks.insert(1, {"id": "corrupt", "image": store_blob(redis_conn, target_bytes(44)[:300])})
    tasks.append({"id": "missing", "image": {"path": "/nonexistent/image.png"}})
    tasks.append({"id": "nul", "image": {"path": "/tmp/a\x00b.png"}})  # a ValueError from the OS layer: the input's fault
    namespace, (job_id,) = enqueue_segmentation(redis_conn, digest, tasks, chunk_size=10, queue=queue_name)
    assert run_burst_worker(model_dir, queue_name, env={"OMP_NUM_THREADS": str(torch_threads)}).returncode == 0
    job = fetch_job(redis_conn, job_id)
    assert job.get_status() == "finished"
    meta = job.get_meta()
    assert meta["overlapped"] is (torch_threads == 1 or torch_threads < CORES)
    assert (meta["done"], meta["failed"], meta["total"]) == (3, 3, 6)
    assert "task corrupt: corrupt or truncated image" in meta["failed_tasks"]["corrupt"]
    assert "no such file" in meta["failed_tasks"]["missing"]
    assert "not a usable path" in meta["failed_tasks"]["nul"] and set(meta["input_failures"]) == {"corrupt", "missing", "nul"}
    assert set(_results(redis_conn, namespace)) == {"t0", "t1", "t2"}


@pytest.mark.fault
@pytest.mark.parametrize("reference,error", [({"label_studio": {"task": 7}}, "KeyError: 'value'"), ({"path": 5}, "TypeError")])
def test_fault_a_programming_error_in_a_chunk_fails_the_job_once(redis_conn, model_dir, queue_name, reference, error):
    """A bug met while doing one task (an image reference its source cannot read: a payload no backend code writes)
    fails the chunk once, loudly, with its traceback: it is neither recorded task by task as a "system" failure
    (a KeyError was) nor retried (a TypeError ran four times)."""
    digest = store_prompt_set(redis_conn, [scene_prompt(8)])
    tasks = [{"id": "fine", "image": store_blob(redis_conn, target_bytes(80))}, {"id": "bug", "image": reference}]
    _, (job_id,) = enqueue_segmentation(redis_conn, digest, tasks, chunk_size=10, queue=queue_name)
    result = run_burst_worker(model_dir, queue_name)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    job = fetch_job(redis_conn, job_id)
    assert job.get_status() == "failed"
    assert error in job.latest_result().exc_string and "Traceback" in output
    assert output.count("exception raised while executing") == 1, output  # ran once: a re-run meets the same bug
    assert "failed on a programming error" in output
    meta = job.get_meta()
    assert "failed_tasks" not in meta and meta.get("failed", 0) == 0  # no task marked failed as "system"


def test_retries_are_decided_by_the_exception_type_not_its_text():
    from types import SimpleNamespace

    from worker import ChunkIncomplete, ChunkInterrupted, WeightsMismatch
    from worker.errors import NotInRedis
    from worker.gpu_worker import retry_by_type

    def left(exc: BaseException, retries: int | None = 2) -> int | None:
        job = SimpleNamespace(id="j", retries_left=retries)
        retry_by_type(job, type(exc), exc, None)
        return job.retries_left

    assert left(ChunkInterrupted("stopping")) == 3  # a stop uses no retry
    assert left(ChunkInterrupted("stopping"), retries=None) is None
    assert left(WeightsMismatch("other weights")) == 0
    assert left(KeyError("value")) == left(TypeError("x")) == left(AttributeError("x")) == 0  # bugs: once
    assert left(ChunkIncomplete("2 tasks kept failing")) == left(TransientError("503")) == 2
    assert left(NotInRedis("prompt set expired")) == 2  # the project's own lookups are not bugs
    assert left(RuntimeError("ChunkInterrupted, WeightsMismatch, KeyError")) == 2  # names in a message decide nothing


def test_a_stop_signal_knows_when_it_lands_inside_a_chunk():
    """A stop that the chunk does not reach in time interrupts it only where the chunk's own code runs (see
    `SegGptWorker._interrupt_chunk`): recognised by the code object, which no renaming of its file changes."""
    from worker.gpu_worker import _inside_chunk
    from worker.model_jobs import segment_chunk

    with pytest.raises(Exception) as raised:
        segment_chunk({}, None)  # fails at once, reading its payload: the innermost frame is called from the chunk's
    innermost = raised.tb
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    assert _inside_chunk(innermost.tb_frame)
    assert not _inside_chunk(sys._getframe())


@pytest.mark.fault
def test_fault_worker_sigkill_mid_job_finishes_elsewhere_exactly_once(redis_conn, model_dir, queue_name, tmp_path):
    digest = store_prompt_set(redis_conn, [scene_prompt(5)])
    blob = store_blob(redis_conn, target_bytes(50, size=(60, 60)))
    tasks = [{"id": f"t{i}", "image": blob} for i in range(400)]
    namespace, (job_id,) = enqueue_segmentation(redis_conn, digest, tasks, chunk_size=400, queue=queue_name,
                                                sink=SinkSpec("redis", {"write_log": True}))
    fast = ("--heartbeat-interval", "1", "--maintenance-interval", "2")
    first = start_worker(model_dir, queue_name, *fast, log=tmp_path / "first.log")
    try:
        wait_for(lambda: fetch_job(redis_conn, job_id).get_meta().get("done", 0) >= 20, 120, what="first worker to start")
    finally:
        first.kill()  # SIGKILL: no cleanup, no goodbye
        first.wait()
    done_at_kill = fetch_job(redis_conn, job_id).get_meta()["done"]
    assert done_at_kill < 400, "the job finished before the kill; make it longer"
    second = start_worker(model_dir, queue_name, *fast, log=tmp_path / "second.log")
    try:
        wait_for(lambda: fetch_job(redis_conn, job_id).get_status() == "finished", 180, interval=0.5, what="the job to finish on the second worker")
    finally:
        second.terminate()
        second.wait(30)
    completions = write_counts(redis_conn, namespace)
    assert set(completions) == {t["id"] for t in tasks}
    assert max(completions.values()) == 1, [k for k, v in completions.items() if v > 1]  # each task done once
    meta = fetch_job(redis_conn, job_id).get_meta()
    assert meta["done"] == 400 and meta["worker"]["pid"] != first.pid


def test_a_worker_dropped_from_the_registry_registers_again(redis_conn, model_dir, queue_name, tmp_path):
    """Another worker's sweep drops a worker whose registration expired (it was cut off from Redis longer than it
    lives); once it reaches Redis again it registers anew, and `status` lists it."""
    from rq import Worker, worker_registration

    from worker import queue_status

    worker = start_worker(model_dir, queue_name, "--heartbeat-interval", "1", log=tmp_path / "worker.log")
    try:
        listed = lambda: [w for w in queue_status(redis_conn, [queue_name])["workers"] if queue_name in w["queues"]]  # noqa: E731
        (entry,) = wait_for(listed, 120, interval=0.2, what="the worker to register")
        key = Worker.redis_worker_namespace_prefix + entry["name"]
        redis_conn.srem(worker_registration.REDIS_WORKER_KEYS, key)  # what clean_worker_registry does to a lost worker
        redis_conn.delete(key)
        assert not listed()
        (again,) = wait_for(listed, 30, interval=0.2, what="the worker to register again")
        assert again["name"] == entry["name"] and again["queues"] == entry["queues"]
        assert "registered again" in (tmp_path / "worker.log").read_text()
    finally:
        worker.terminate()
        worker.wait(30)


def test_fault_a_zombie_worker_writes_nothing_for_a_chunk_taken_over(redis_conn, model_dir, queue_name, tmp_path):
    """A worker frozen mid-chunk (SIGSTOP: as a partition or a long pause, it misses its heartbeats) has its chunk
    re-queued and run by another; thawed, it still holds the chunk in memory. Its writes for it are refused: every
    task is written once, the job ends finished (the zombie records neither a result nor a failure)."""
    import signal

    from rq.registry import FailedJobRegistry

    from worker.keys import chunk_owner_key

    digest = store_prompt_set(redis_conn, [scene_prompt(5)])
    blob = store_blob(redis_conn, target_bytes(51, size=(60, 60)))
    tasks = [{"id": f"z{i}", "image": blob} for i in range(400)]
    namespace, (job_id,) = enqueue_segmentation(redis_conn, digest, tasks, chunk_size=400, queue=queue_name,
                                                sink=SinkSpec("redis", {"write_log": True}))
    fast = ("--heartbeat-interval", "1", "--maintenance-interval", "2")
    first = start_worker(model_dir, queue_name, *fast, log=tmp_path / "first.log")
    second = None
    try:
        wait_for(lambda: fetch_job(redis_conn, job_id).get_meta().get("done", 0) >= 20, 120, what="the first worker to start")
        first_owner = redis_conn.get(chunk_owner_key(job_id))
        first.send_signal(signal.SIGSTOP)
        second = start_worker(model_dir, queue_name, *fast, log=tmp_path / "second.log")
        wait_for(lambda: redis_conn.get(chunk_owner_key(job_id)) not in (None, first_owner), 120, interval=0.2,
                 what="the second worker to take the chunk over")
        done_at_takeover = fetch_job(redis_conn, job_id).get_meta()["done"]
        wait_for(lambda: fetch_job(redis_conn, job_id).get_meta().get("done", 0) >= done_at_takeover + 8, 120, interval=0.2,
                 what="the second worker to make progress")
        first.send_signal(signal.SIGCONT)  # the zombie wakes up mid-chunk
        wait_for(lambda: "no longer this worker's" in (tmp_path / "first.log").read_text(errors="replace"), 60, interval=0.2,
                 what="the zombie to find the chunk taken over")
        wait_for(lambda: fetch_job(redis_conn, job_id).get_status() == "finished", 180, interval=0.5, what="the job to finish")
    finally:
        first.send_signal(signal.SIGCONT)
        for process in (first, second):
            if process is not None:
                process.terminate()
                process.wait(30)
    completions = write_counts(redis_conn, namespace)
    assert set(completions) == {t["id"] for t in tasks}
    assert max(completions.values()) == 1, sorted(k for k, v in completions.items() if v > 1)
    assert fetch_job(redis_conn, job_id).get_meta()["worker"]["pid"] == second.pid
    assert job_id not in FailedJobRegistry(queue=get_queue(redis_conn, queue_name)).get_job_ids()


@pytest.mark.fault
def test_fault_redis_restart_loses_no_queued_job(tmp_path, queue_name):
    server = EmbeddedRedis(tmp_path / "redis")
    connection = server.connect()
    digest = store_prompt_set(connection, [scene_prompt(6)])
    tasks = [{"id": i, "image": store_blob(connection, target_bytes(60 + i))} for i in range(5)]
    namespace, job_ids = enqueue_segmentation(connection, digest, tasks, chunk_size=1, queue=queue_name)
    old_pid = server.pid()
    server.stop(hard=True)  # SIGKILL: only what reached the disk survives
    connection = EmbeddedRedis(tmp_path / "redis").connect()  # the next user starts it again
    assert server.pid() != old_pid
    assert get_queue(connection, queue_name).job_ids == job_ids
    result = run_burst_worker(tmp_path, queue_name)
    assert result.returncode == 0, result.stderr
    assert set(_results(connection, namespace)) == {str(i) for i in range(5)}
    server.stop()


def test_progress_waits_out_a_redis_restart(tmp_path, queue_name, caplog):
    """A command waiting on jobs (bootstrap, cancel) keeps waiting while Redis restarts, with one warning, and
    reads on once it is back; it never ends with a traceback (a Redis restart on the queue host, issue 26)."""
    from worker.waiting import ProgressTracker

    server = EmbeddedRedis(tmp_path / "redis")
    connection = server.connect()
    digest = store_prompt_set(connection, [scene_prompt(6)])
    tasks = [{"id": i, "image": store_blob(connection, target_bytes(70 + i))} for i in range(2)]
    _, job_ids = enqueue_segmentation(connection, digest, tasks, chunk_size=1, queue=queue_name)
    tracker = ProgressTracker(connection, job_ids)
    try:
        before = tracker.poll()
        assert before["jobs"] == 2 and before["jobs_finished"] == 0
        server.stop()
        with caplog.at_level("WARNING"):
            assert tracker.poll() == before and tracker.poll() == before
        assert [r.getMessage() for r in caplog.records].count(next(r.getMessage() for r in caplog.records if "cannot reach Redis" in r.getMessage())) == 1
        server.ensure_running()
        assert tracker.poll() == before and not tracker.outage
    finally:
        server.stop()


def test_failed_jobs_stay_visible_and_can_be_requeued(redis_conn, model_dir, queue_name):
    digest = store_prompt_set(redis_conn, [scene_prompt(7)])
    redis_conn.delete(prompt_set_key(digest))  # the prompt set is gone when the job runs: the job fails
    tasks = [{"id": "x", "image": store_blob(redis_conn, target_bytes(70))}]
    namespace, (job_id,) = enqueue_segmentation(redis_conn, digest, tasks, queue=queue_name)
    assert run_burst_worker(model_dir, queue_name).returncode == 0
    assert fetch_job(redis_conn, job_id).get_status() == "failed"
    cli = [sys.executable, "-m", "backend.cli"]
    status = subprocess.run([*cli, "status", "--queue", queue_name], env=worker_env(model_dir), capture_output=True, text=True, timeout=60)
    assert f"queue {queue_name}: 0 queued, 0 running, 1 failed" in status.stdout
    assert "is not in Redis" in status.stdout  # the reason is shown
    store_prompt_set(redis_conn, [scene_prompt(7)])  # the cause is fixed
    retried = subprocess.run([*cli, "retry-failed", "--queue", queue_name], env=worker_env(model_dir), capture_output=True, text=True, timeout=60)
    assert f"re-queued {job_id}" in retried.stdout
    assert run_burst_worker(model_dir, queue_name).returncode == 0
    assert fetch_job(redis_conn, job_id).get_status() == "finished"
    assert set(_results(redis_conn, namespace)) == {"x"}


def test_status_lists_live_workers_and_their_devices(redis_conn, model_dir, queue_name, tmp_path):
    worker = start_worker(model_dir, queue_name, "--heartbeat-interval", "1", log=tmp_path / "w.log")
    cli = [sys.executable, "-m", "backend.cli", "status", "--json", "--queue", queue_name]
    try:
        def live():
            out = subprocess.run(cli, env=worker_env(model_dir), capture_output=True, text=True, timeout=60).stdout
            workers = [w for w in json.loads(out)["workers"] if queue_name in w["queues"]]
            return workers if workers and workers[0]["device"] != "?" else None

        (entry,) = wait_for(live, 60, interval=0.5, what="the worker to register")
        assert entry["device"] == "cpu" and entry["weights"] == "random:tiny" and entry["model_loads"] == 1
    finally:
        worker.terminate()
        worker.wait(30)


def test_embedded_redis_is_shared_by_every_process(tmp_path):
    code = "from worker import get_connection, EmbeddedRedis; c = get_connection(); c.incr('shared'); print(EmbeddedRedis().pid())"
    env = {**worker_env(tmp_path)}
    env.pop("REDIS_URL", None)
    pids = {subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout.strip() for _ in range(3)}
    assert len(pids) == 1 and pids != {""}
    server = EmbeddedRedis(tmp_path / "redis")
    assert int(server.connect().get("shared")) == 3
    server.stop()


def test_transient_errors_are_retried_with_backoff():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("503 from the image host")
        return "image bytes"

    assert with_backoff(flaky, attempts=4, first_delay=0.5, sleep=sleeps.append) == "image bytes"
    assert sleeps == [0.5, 1.0]
    with pytest.raises(TransientError):
        with_backoff(lambda: (_ for _ in ()).throw(TransientError("down")), attempts=3, first_delay=0.1, sleep=sleeps.append)


def test_a_run_that_lost_its_chunk_can_neither_save_progress_nor_write_a_result(redis_conn):
    """The ownership check and the write are one transaction: a run frozen between them (a partition, a pause)
    writes nothing once another run has claimed the chunk."""
    from types import SimpleNamespace

    from worker import ChunkLost, JobContext, fetch_job
    from worker.keys import chunk_done_key, chunk_owner_key, results_key
    from worker.ownership import claim, save_meta_if_held
    from worker.task_io import RedisSink

    digest = store_prompt_set(redis_conn, [scene_prompt(1)])
    blob = store_blob(redis_conn, target_bytes(3, size=(30, 30)))
    _, (job_id,) = enqueue_segmentation(redis_conn, digest, [{"id": "o1", "image": blob}], queue=f"own-{uuid.uuid4().hex[:6]}")
    job = fetch_job(redis_conn, job_id)
    claim(redis_conn, job_id, "run-a")
    job.meta["done"] = 1
    save_meta_if_held(job, "run-a")
    assert fetch_job(redis_conn, job_id).get_meta()["done"] == 1
    claim(redis_conn, job_id, "run-b")  # another worker took the chunk over
    job.meta["done"] = 99
    with pytest.raises(ChunkLost):
        save_meta_if_held(job, "run-a")
    assert fetch_job(redis_conn, job_id).get_meta()["done"] == 1
    sink = RedisSink(JobContext(redis_conn), {"namespace": f"own-{job_id}"})
    sink.owner_guard = (chunk_owner_key(job_id), "run-a")
    segmentation = SimpleNamespace(size=(2, 2), scores={"a": 1.0}, masks={"a": np.ones((2, 2), bool)})
    with pytest.raises(ChunkLost):
        sink.write({"id": "o1"}, segmentation, chunk_done_key(job_id))
    assert redis_conn.hlen(results_key(f"own-{job_id}")) == 0 and redis_conn.scard(chunk_done_key(job_id)) == 0
    sink.owner_guard = (chunk_owner_key(job_id), "run-b")
    sink.write({"id": "o1"}, segmentation, chunk_done_key(job_id))
    assert redis_conn.hlen(results_key(f"own-{job_id}")) == 1



def test_a_job_marked_queued_that_no_queue_holds_is_queued_again_once(redis_conn):
    """A worker killed between taking a chunk and starting it can leave it marked queued in no list at all: the
    bootstrap's supervision puts it back, and leaves alone a chunk its queue (or a worker) still holds."""
    from worker.liveness import requeue_lost

    queue_name = f"lost-{uuid.uuid4().hex[:6]}"
    digest = store_prompt_set(redis_conn, [scene_prompt(1)])
    blob = store_blob(redis_conn, target_bytes(3, size=(30, 30)))
    _, (kept, lost) = enqueue_segmentation(redis_conn, digest, [{"id": "k", "image": blob}, {"id": "l", "image": blob}],
                                           chunk_size=1, queue=queue_name)
    queue = get_queue(redis_conn, queue_name)
    redis_conn.lrem(queue.key, 0, lost)  # taken by a worker that died before RQ marked it started
    assert requeue_lost(redis_conn, [kept, lost]) == [lost]
    assert sorted(queue.get_job_ids()) == sorted([kept, lost])
    assert requeue_lost(redis_conn, [kept, lost]) == []  # nothing twice
