"""What `serve` starts ends with it, however it ends; a stopped worker's chunk is re-queued, never lost; a worker
outlives a Redis outage. Processes are followed through /proc, not through process objects."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from worker import EmbeddedRedis, enqueue_segmentation, fetch_job, store_blob, store_prompt_set
from worker.keys import chunk_done_key
from worker.payloads import SinkSpec

from .ls_harness import free_port, wait_http
from .process_check import alive, command_line, live_descendants
from .queue_helpers import scene_prompt, start_worker, target_bytes, wait_for, worker_env, write_counts
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

TASKS = 400


def _serve(model_dir, log):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--weights", "random:tiny", "--device", "cpu"],
        env=worker_env(model_dir), stdout=open(log, "wb"), stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec(),
    )
    wait_http(f"http://127.0.0.1:{port}/health", 60, "serve", process, log)
    return process


def _finish_elsewhere(model_dir, job_id: str, namespace: str, log) -> None:
    """A fresh worker (on a fresh embedded Redis) completes the chunk; every task is stored exactly once."""
    connection = EmbeddedRedis(model_dir / "redis").connect()
    worker = start_worker(model_dir, "seggpt", "--heartbeat-interval", "1", "--maintenance-interval", "2", log=log)
    try:
        wait_for(lambda: fetch_job(connection, job_id).get_status() == "finished", 420, interval=0.5, what="the chunk to finish")  # 400 tasks on one shared core: 90-300 s
    finally:
        worker.terminate()
        worker.wait(30)
    writes = write_counts(connection, namespace)
    assert len(writes) == TASKS and max(writes.values()) == 1, [k for k, v in writes.items() if v > 1]
    assert connection.scard(chunk_done_key(job_id)) == TASKS
    EmbeddedRedis(model_dir / "redis").stop()


@pytest.mark.fault
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_everything_serve_started_ends_with_it_and_its_chunk_is_not_lost(tmp_path, how):
    log = tmp_path / "serve.log"
    serve = _serve(tmp_path, log)
    connection = EmbeddedRedis(tmp_path / "redis").connect()
    wait_for(lambda: len([p for p in live_descendants(serve.pid) if "worker" in command_line(p)]) == 2, 30, what="the local workers")
    children = live_descendants(serve.pid)
    kinds = sorted("redis" if "redis-server" in command_line(p) else "control" if "--control" in command_line(p) else "worker"
                   for p in children)
    assert kinds == ["control", "redis", "worker"], {p: command_line(p) for p in children}
    digest = store_prompt_set(connection, [scene_prompt(2)])
    blob = store_blob(connection, target_bytes(7, size=(60, 60)))
    namespace, (job_id,) = enqueue_segmentation(connection, digest, [{"id": f"t{i}", "image": blob} for i in range(TASKS)],
                                                chunk_size=TASKS, sink=SinkSpec("redis", {"write_log": True}))
    wait_for(lambda: fetch_job(connection, job_id).get_meta().get("done", 0) >= 10, 120, what="the chunk to be running")
    started = time.monotonic()
    serve.send_signal(getattr(signal, how))
    wait_for(lambda: not any(alive(p) for p in [serve.pid, *children]), 30, interval=0.2,
             what=f"serve and its children to end after {how}: {[command_line(p) for p in children if alive(p)]}")
    serve.wait(5)
    assert time.monotonic() - started < 30
    if how != "SIGKILL":
        # a warm shutdown: the worker put its chunk back in the queue before Redis went down
        restarted = EmbeddedRedis(tmp_path / "redis").connect()
        job = fetch_job(restarted, job_id)
        assert job.get_status() == "queued", job.get_status()
        assert 10 <= restarted.scard(chunk_done_key(job_id)) < TASKS
    _finish_elsewhere(tmp_path, job_id, namespace, tmp_path / "after.log")


@pytest.mark.fault
def test_a_worker_waits_out_a_redis_outage_and_resumes(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    connection = server.connect()
    log = tmp_path / "worker.log"
    worker = start_worker(tmp_path, "outage", log=log)
    try:
        wait_for(lambda: b"Listening on" in log.read_bytes() or b"outage" in log.read_bytes(), 60, interval=0.2, what="the worker")
        time.sleep(1)
        server.stop()
        time.sleep(6)  # several reconnection attempts
        assert worker.poll() is None, log.read_text()[-2000:]
        connection = server.connect()  # Redis is back, with what it had
        digest = store_prompt_set(connection, [scene_prompt(3)])
        blob = store_blob(connection, target_bytes(9, size=(60, 60)))
        namespace, (job_id,) = enqueue_segmentation(connection, digest, [{"id": "a", "image": blob}, {"id": "b", "image": blob}], queue="outage")
        wait_for(lambda: fetch_job(connection, job_id).get_status() == "finished", 90, interval=0.5, what="the job after the outage")
        text = log.read_text()
        outage_lines = [line for line in text.splitlines() if "could not connect to Redis" in line or "cannot reach Redis" in line]
        assert 1 <= len(outage_lines) <= 2, outage_lines  # said once (by RQ or by us), not per attempt
        assert "reachable again" in text
        # and with Redis away again, SIGTERM still ends it at once
        server.stop()
        time.sleep(2)
        stopped = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
        assert time.monotonic() - stopped < 5
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        server.stop()


def test_a_command_that_starts_the_embedded_redis_ends_it_when_it_ends(tmp_path):
    out = subprocess.run([sys.executable, "-m", "backend.cli", "status", "--json"], env=worker_env(tmp_path),
                         capture_output=True, text=True, timeout=60, preexec_fn=exec_child_preexec())
    assert out.returncode == 0, out.stderr
    assert '"workers": []' in out.stdout
    socket = str(EmbeddedRedis(tmp_path / "redis").socket)
    left = [pid for pid in live_descendants(__import__("os").getpid()) if socket in command_line(pid)]
    assert left == [], [command_line(pid) for pid in left]


def test_a_stopping_worker_does_not_wait_out_its_command_channel_poll(tmp_path):
    """The race behind a worker that took over 30 s to exit on SIGTERM: the channel thread reads the unsubscribe
    confirmation, goes back to waiting for a message, and only then is asked to stop; redis-py joins it. With RQ's
    60 s poll that join took a minute; ours returns within the poll."""
    from worker.gpu_worker import PUBSUB_POLL, SegGptWorker

    server = EmbeddedRedis(tmp_path / "redis")
    try:
        connection = server.connect()
        worker = SegGptWorker(["race"], connection=connection)
        worker.subscribe()
        time.sleep(0.3)
        worker.pubsub.unsubscribe()
        time.sleep(0.3)  # the thread has taken the confirmation and waits again
        assert worker.pubsub_thread.is_alive()
        started = time.monotonic()
        worker.pubsub_thread.stop()
        assert not worker.pubsub_thread.is_alive()
        assert time.monotonic() - started < PUBSUB_POLL + 1.0
    finally:
        server.stop()
