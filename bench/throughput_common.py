"""Shared set-up for the throughput benchmarks: a mid-sized model whose forward dominates on a CPU, saved to disk
for worker processes, a private embedded Redis, and helpers to run workers and time a batch of tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# About 0.1 s per forward row on one core: large enough that model time dominates, small enough to run quickly.
MID = dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=8, image_size=(448, 224), patch_size=16,
           pretrain_image_size=224, decoder_hidden_size=32, merge_index=2, intermediate_hidden_state_indices=(3, 5, 7))


def save_mid_model(directory: Path) -> Path:
    from seggpt_core import SegGptConfig, build_model, save_model

    return save_model(build_model(SegGptConfig(**MID), seed=0), directory / "mid")


def worker_env(directory: str, threads: int) -> dict:
    env = {**os.environ, "MODEL_DIR": directory, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("REDIS_URL", None)
    return env


def start_workers(count: int, directory: str, weights: Path, queue: str, threads: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-m", "backend.cli", "--log-level", "WARNING", "worker", "--queue", queue,
                          "--weights", str(weights), "--device", "cpu", "--dtype", "float32"],
                         env=worker_env(directory, threads), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


def wait_for_workers(connection, queue: str, count: int, timeout: float = 120) -> None:
    from worker import queue_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [w for w in queue_status(connection, [queue])["workers"] if queue in w["queues"] and w.get("model_loads")]
        if len(live) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{count} worker(s) did not come up")


def timed_batch(connection, queue: str, tasks: list[dict], digest: str, chunk_size: int) -> float:
    """Seconds from enqueueing `tasks` to the last job finishing."""
    from worker import enqueue_segmentation
    from worker.waiting import wait_for_jobs

    started = time.perf_counter()
    _, job_ids = enqueue_segmentation(connection, digest, tasks, chunk_size=chunk_size, queue=queue)
    progress = wait_for_jobs(connection, job_ids, interval=0.02)
    assert progress["done"] == len(tasks), progress
    return time.perf_counter() - started


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(60)
