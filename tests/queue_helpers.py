"""Helpers for job-layer tests: real embedded Redis servers and real worker subprocesses."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from seggpt_core.research.shapes import make_scene
from worker.keys import write_log_key
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scene_prompt(seed: int = 1):
    from worker import PromptRecord

    scene = make_scene(seed, must_include=("disc", "star"))
    return PromptRecord(png_bytes(scene.image), {"disc": scene.masks["disc"], "star": scene.masks["star"]})


def target_bytes(seed: int, size=(90, 120)) -> bytes:
    return png_bytes(make_scene(seed, size=size).image)


def worker_env(model_dir: Path, **extra: str) -> dict:
    env = {**os.environ, "MODEL_DIR": str(model_dir), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("REDIS_URL", None)
    return env


def start_worker(model_dir: Path, queue: str, *extra: str, log: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "backend.cli", "worker", "--queue", queue, "--weights", "random:tiny", "--device", "cpu", *extra]
    output = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(command, env=worker_env(model_dir, **(env or {})), stdout=output, stderr=subprocess.STDOUT,
                            preexec_fn=exec_child_preexec())


def run_burst_worker(model_dir: Path, queue: str, *extra: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "backend.cli", "worker", "--burst", "--queue", queue, "--weights", "random:tiny", "--device", "cpu", *extra]
    return subprocess.run(command, env=worker_env(model_dir, **(env or {})), capture_output=True, text=True, timeout=timeout)


def write_counts(connection, namespace: str) -> Counter:
    """How many times the redis sink wrote each task of `namespace` (its `write_log` audit)."""
    return Counter(x.decode() for x in connection.lrange(write_log_key(namespace), 0, -1))


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
