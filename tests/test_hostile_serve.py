"""Issue 24 against `seggpt-ls serve` as a real process: /health answers while every request thread waits on a
blocked /predict, and unauthenticated bodies cost the server nothing however large they are."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from worker import EmbeddedRedis
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

from .ls_harness import free_port, wait_http
from .queue_helpers import worker_env
from .test_backend_contract import _fill_pool

SETUP = json.loads((Path(__file__).parent / "recorded" / "setup.json").read_text())["body"]
AUTH = ("u", "p")


def _memory_kb(pid: int, field: str) -> int:
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])


def test_health_while_predict_blocks_and_bounded_memory_before_auth(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    # no worker: every /predict waits its whole budget, holding a request thread
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "0",
         "--weights", "random:tiny", "--device", "cpu", "--predict-budget", "8", "--basic-auth-user", AUTH[0], "--basic-auth-pass", AUTH[1]],
        env=worker_env(tmp_path), stdout=open(log, "wb"), stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec(),
    )
    try:
        wait_http(f"{url}/health", 60, "serve", process, log)
        _fill_pool({"redis": EmbeddedRedis(tmp_path / "redis").connect()}, 41, SETUP["schema"])
        body = {"tasks": [{"id": 1, "data": {"image": "http://127.0.0.1:9/x.png"}}], "project": "41.1"}
        answers: list[int] = []

        def predict() -> None:
            answers.append(httpx.post(f"{url}/predict", json=body, auth=AUTH, timeout=60).status_code)

        threads = [threading.Thread(target=predict) for _ in range(46)]  # more than the 40 request threads
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        slowest = 0.0
        for _ in range(20):
            started = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "UP"
            slowest = max(slowest, time.perf_counter() - started)
        blocked = sum(thread.is_alive() for thread in threads)
        # 23.7 s when /health shared the pool; Label Studio's own limit is 1 s (bench/hostile_load.py measures the
        # 100 ms goal: a timed test on a loaded CI machine would flake)
        assert blocked == 46 and slowest < 1.0, (blocked, slowest)
        for thread in threads:
            thread.join(60)
        assert answers == [200] * 46

        # 8 parallel unauthenticated 50 MB bodies: each is refused from its headers, none is buffered or parsed
        before = _memory_kb(process.pid, "VmRSS")
        junk = b"{" * (50 * 2**20)

        def post(index: int) -> int:
            chunks = (junk[i:i + 2**20] for i in range(0, len(junk), 2**20)) if index % 2 else junk  # chunked, or declared
            return httpx.post(f"{url}/setup", content=chunks, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(8)))
        after = _memory_kb(process.pid, "VmHWM")
        assert statuses == [401] * 8
        assert after - before < 64 * 1024, (before, after)  # kB: 677 MB when bodies were parsed before auth
    finally:
        process.terminate()
        process.wait(60)
        EmbeddedRedis(tmp_path / "redis").stop()
