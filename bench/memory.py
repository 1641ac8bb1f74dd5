"""Peak resident memory (VmHWM) of `seggpt-ls serve` and of a CPU worker holding the ViT-L config in fp32.

- serve: `--workers 0` on a private embedded Redis, after /health, /setup and /predict requests; it must not
  import torch at all (checked in /proc/PID/maps). Goal: at most 250 MB.
- worker: random ViT-L weights saved as safetensors (1.48 GB), loaded by `seggpt-ls worker`, after three real jobs;
  once as started by default and once with `--low-memory`, whose peak and steady job time are compared.
  Baseline: the size of the weights file. Goal: peak at most 1.3x the weights.
The last line is `ratio=<default worker peak / weights size>`.

    python bench/memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
JOBS = 3
sys.path.insert(0, str(ROOT))


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def main() -> None:
    from tests.ls_harness import free_port, wait_http
    from tests.queue_helpers import scene_prompt, target_bytes
    from worker import EmbeddedRedis, enqueue_segmentation, fetch_job, store_blob, store_prompt_set

    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "MODEL_DIR": directory}
        env.pop("REDIS_URL", None)
        server = EmbeddedRedis(Path(directory) / "redis")
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "backend.cli", "--log-level", "WARNING", "serve", "--host", "127.0.0.1",
                                  "--port", str(port), "--workers", "0"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health", 60, "serve")
            setup = json.loads((ROOT / "tests" / "recorded" / "setup.json").read_text())["body"]
            predict = json.loads((ROOT / "tests" / "recorded" / "predict.json").read_text())["body"]
            for _ in range(20):
                httpx.get(f"{url}/health")
                httpx.post(f"{url}/setup", json=setup)
                httpx.post(f"{url}/predict", json=predict, timeout=30)
            serve_peak = peak_mb(serve.pid)
            torch_loaded = "libtorch" in Path(f"/proc/{serve.pid}/maps").read_text()
        finally:
            serve.terminate()
            serve.wait(30)

        from seggpt_core import build_model, save_model

        weights = Path(directory) / "vit-large"
        save_model(build_model("vit-large", seed=0), weights)
        weights_mb = (weights / "model.safetensors").stat().st_size / 2**20
        connection = server.connect()
        digest = store_prompt_set(connection, [scene_prompt(1)])
        image = store_blob(connection, target_bytes(2, size=(480, 640)))
        workers = {}
        try:
            for mode, flags in (("default", []), ("--low-memory", ["--low-memory"])):  # same jobs, one after the other
                queue = f"memory-{len(workers)}"
                jobs = [enqueue_segmentation(connection, digest, [{"id": n, "image": image}], queue=queue)[1][0] for n in range(JOBS)]
                worker = subprocess.Popen([sys.executable, "-m", "backend.cli", "--log-level", "WARNING", "worker", "--queue", queue,
                                           "--weights", str(weights), "--device", "cpu", "--dtype", "float32", *flags], env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    while any(fetch_job(connection, job).get_status() not in ("finished", "failed") for job in jobs):
                        time.sleep(0.5)
                    done = [fetch_job(connection, job) for job in jobs]
                    # the first job pages the weights in; later ones show the steady forward time
                    seconds = [(job.ended_at - job.started_at).total_seconds() for job in done[1:]]
                    workers[mode] = (peak_mb(worker.pid), min(seconds), [str(job.get_status()) for job in done])
                finally:
                    worker.terminate()
                    worker.wait(60)
        finally:
            server.stop()
    print(f"serve: peak RSS {serve_peak:.0f} MB after 60 requests; torch loaded: {torch_loaded} (goal: <= 250 MB, no torch)")
    for mode, (peak, seconds, statuses) in workers.items():
        print(f"worker {mode}: ViT-L fp32 on CPU, {JOBS} jobs ({', '.join(sorted(set(statuses)))}); weights {weights_mb:.0f} MB; "
              f"peak RSS {peak:.0f} MB = {peak / weights_mb:.3f}x (goal: <= 1.3x); steady job {seconds:.2f} s")
    (default_peak, default_s, _), (low_peak, low_s, _) = workers["default"], workers["--low-memory"]
    print(f"--low-memory vs default: peak {low_peak / default_peak:.3f}x, job time {low_s / default_s:.3f}x")
    print(f"ratio={default_peak / weights_mb:.3f}")


if __name__ == "__main__":
    main()
