"""`seggpt-ls serve` as a real process: local workers on the embedded Redis, no model in the web process, and
/health and /setup answering while every worker is busy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from worker import EmbeddedRedis, enqueue_segmentation, store_blob, store_prompt_set

from .ls_harness import free_port, wait_http
from .queue_helpers import scene_prompt, target_bytes, wait_for, worker_env
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

SETUP = json.loads((Path(__file__).parent / "recorded" / "setup.json").read_text())["body"]


def test_serve_starts_workers_and_stays_responsive_while_they_work(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--weights", "random:tiny", "--device", "cpu"],
        env=worker_env(tmp_path), stdout=open(log, "wb"), stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec(),
    )
    try:
        wait_http(f"{url}/health", 60, "serve", process, log)
        connection = EmbeddedRedis(tmp_path / "redis").connect()
        # the local worker registers itself, with its device
        status = lambda: json.loads(subprocess.run([sys.executable, "-m", "backend.cli", "status", "--json"], env=worker_env(tmp_path), capture_output=True, text=True).stdout)
        workers = wait_for(lambda: [w for w in status()["workers"] if w["role"] == "model"], 60, interval=0.5, what="the local worker")
        assert workers[0]["device"] == "cpu"
        # and its control worker, for the backend's own jobs, without the model
        controls = wait_for(lambda: [w for w in status()["workers"] if w["role"] == "control"], 60, interval=0.5, what="the control worker")
        assert controls[0]["queues"] == ["seggpt-control"] and controls[0]["device"] == "none"
        # keep every worker busy
        digest = store_prompt_set(connection, [scene_prompt(1)])
        blob = store_blob(connection, target_bytes(3, size=(200, 200)))
        _, (job_id,) = enqueue_segmentation(connection, digest, [{"id": i, "image": blob} for i in range(3000)], chunk_size=3000)
        wait_for(lambda: status()["running"], 60, interval=0.2, what="the worker to be busy")
        slowest = 0.0
        for _ in range(20):
            for method, path, body in (("GET", "/health", None), ("POST", "/setup", SETUP)):
                started = time.perf_counter()
                response = httpx.request(method, url + path, json=body, timeout=5)
                slowest = max(slowest, time.perf_counter() - started)
                assert response.status_code == 200
        assert status()["running"], "the worker finished too early to show anything"
        assert slowest < 1.0, slowest  # Label Studio gives /health 1 s; bench/backend_latency.py measures the 100 ms goal
        # the web process never loads the model: no torch in its address space
        web_pid = process.pid
        assert "libtorch" not in Path(f"/proc/{web_pid}/maps").read_text()
    finally:
        process.terminate()
        process.wait(60)
        EmbeddedRedis(tmp_path / "redis").stop()
    assert "Shutting down" in log.read_text() or process.returncode is not None
