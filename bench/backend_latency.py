"""Latency of /health and /setup, with the worker idle and with it busy, measured side by side in one run.

Starts `seggpt-ls serve --workers 1` on a private embedded Redis, measures `--requests` of each route with the
worker idle, then again while the worker runs a long segmentation job on both cores. Prints medians and p99s;
the last line is `ratio=<busy p99 / idle p99 of /setup>` (the goal is that busy p99 stays under 100 ms).

    python bench/backend_latency.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(client: httpx.Client, count: int) -> dict[str, list[float]]:
    setup = json.loads((ROOT / "tests" / "recorded" / "setup.json").read_text())["body"]
    times = {"/health": [], "/setup": []}
    for _ in range(count):
        for path in times:
            started = time.perf_counter()
            response = client.post(path, json=setup) if path == "/setup" else client.get(path)
            times[path].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
    return times


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    from tests.ls_harness import free_port, wait_http
    from tests.queue_helpers import scene_prompt, target_bytes
    from worker import EmbeddedRedis, enqueue_segmentation, store_blob, store_prompt_set
    from worker.queue import queue_status

    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "MODEL_DIR": directory}
        env.pop("REDIS_URL", None)
        port = free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "--log-level", "WARNING", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--weights", "random:tiny", "--device", "cpu"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        server = EmbeddedRedis(Path(directory) / "redis")
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 60, "serve")
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
            connection = server.connect()
            while not queue_status(connection)["workers"]:
                time.sleep(0.2)
            measure(client, 10)  # warm-up
            idle = measure(client, args.requests)
            digest = store_prompt_set(connection, [scene_prompt(1)])
            blob = store_blob(connection, target_bytes(3, size=(400, 400)))
            enqueue_segmentation(connection, digest, [{"id": i, "image": blob} for i in range(100000)], chunk_size=100000)
            while not queue_status(connection)["running"]:
                time.sleep(0.05)
            busy = measure(client, args.requests)
            still_busy = bool(queue_status(connection)["running"])
        finally:
            serve.terminate()
            serve.wait(60)
            server.stop()
    print(f"requests={args.requests} per route; worker: 1 process (random:tiny, 400x400 targets), 2 CPU cores; busy throughout: {still_busy}")
    for state, times in (("idle", idle), ("busy", busy)):
        for path, values in times.items():
            print(f"{state:4s} {path:8s} median_ms={statistics.median(values):.2f} p99_ms={p99(values):.2f} max_ms={max(values):.2f}")
    print(f"ratio={p99(busy['/setup']) / p99(idle['/setup']):.3f}")


if __name__ == "__main__":
    main()
