"""Well-behaved traffic with and without attack traffic, side by side in one run (issue 24).

Starts `seggpt-ls serve --workers 2` (Basic auth, embedded Redis, random:tiny) against a stand-in Label Studio and a
media server (tests/ls_standin.py, tests/media_server.py). One project has two annotated tasks as prompts. Then two
phases of the same well-behaved load: a client sending one-task /predict requests one after another, and a client
polling /health every 50 ms. The quiet phase has nothing else; the attack phase adds, for its whole length:

- the /predict flood: 20 parallel clients sending unauthenticated 2 MB junk, authenticated 20 MB bodies and
  authenticated malformed tasks (ids of 1.5) to /predict;
- the slow host: an authenticated /predict after another whose image comes from a host sending 1 byte every 0.2 s;
- forged webhooks from 4 clients: TASKS_DELETED of the prompts' tasks, ANNOTATIONS_CREATED naming 3,000 tasks,
  TASKS_CREATED with a million ids (15 MB), START_TRAINING without credentials, unknown actions and projects.

Prints per phase the well-behaved /predict p50/p95, /health p99/max and serve's peak RSS (web process, sampled
every 20 ms), the attack's status counts, and `ratio=<attack p95 / quiet p95 of /predict>` (goal: <= 1.5, with
/health p99 < 100 ms).

    python bench/hostile_load.py [--predicts 40] [--media-timeout 10]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AUTH = ("bench", "bench-pass")
PROJECT = 7


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


class Phase:
    """The well-behaved clients for one phase, and serve's RSS sampled meanwhile."""

    def __init__(self, url: str, pid: int, predicts: int, image: str) -> None:
        self.url, self.pid, self.predicts, self.image = url, pid, predicts, image
        self.predict_ms: list[float] = []
        self.health_ms: list[float] = []
        self.peak_rss = 0
        self.done = threading.Event()

    def _predict(self) -> None:
        body = {"tasks": [{"id": 100, "data": {"image": self.image}}], "project": f"{PROJECT}.1"}
        with httpx.Client(base_url=self.url, auth=AUTH, timeout=120) as client:
            for _ in range(self.predicts):
                started = time.perf_counter()
                answer = client.post("/predict", json=body)
                self.predict_ms.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200 and answer.json()["results"][0]["result"], answer.text[:300]
        self.done.set()

    def _health(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.done.is_set():
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                self.health_ms.append((time.perf_counter() - started) * 1000)
                time.sleep(0.05)

    def _rss(self) -> None:
        while not self.done.is_set():
            status = Path(f"/proc/{self.pid}/status").read_text()
            rss = int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])
            self.peak_rss = max(self.peak_rss, rss)
            time.sleep(0.02)

    def run(self) -> "Phase":
        threads = [threading.Thread(target=t) for t in (self._predict, self._health, self._rss)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self


class Attack:
    """The attack traffic, until stopped; counts the statuses it got. Runs in a process of its own (`run_attack`), so
    that its threads never hold the measuring clients' interpreter lock."""

    def __init__(self, url: str, media_url: str, stop) -> None:
        self.url, self.media_url = url, media_url
        self.stop = stop
        self.statuses: dict[str, Counter] = {"flood": Counter(), "slow": Counter(), "webhook": Counter()}
        self.threads: list[threading.Thread] = []
        junk = b"{" * (2 * 2**20)
        big = b"[" * (20 * 2**20)
        bad = json.dumps({"tasks": [{"id": 1.5, "data": {"image": "x"}}], "project": f"{PROJECT}.1"}).encode()
        self.flood = [(junk, None), (big, AUTH), (bad, AUTH)]
        self.webhooks = [
            json.dumps({"action": "TASKS_DELETED", "project": {"id": PROJECT}, "tasks": [{"id": 11}, {"id": 12}]}).encode(),
            json.dumps({"action": "ANNOTATIONS_CREATED", "project": {"id": PROJECT}, "annotation": [{"id": i, "task": 1000 + i} for i in range(3000)]}).encode(),
            json.dumps({"action": "TASKS_CREATED", "project": {"id": PROJECT}, "tasks": [{"id": i} for i in range(1_000_000)]}).encode(),
            json.dumps({"action": "START_TRAINING", "project": {"id": PROJECT}}).encode(),
            json.dumps({"action": "A B", "project": {"id": PROJECT}}).encode(),
            json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 999}, "annotation": {"id": 1, "task": 1}}).encode(),
        ]

    def _loop(self, kind: str, send) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            index = 0
            while not self.stop.is_set():
                try:
                    self.statuses[kind][send(client, index)] += 1
                except httpx.HTTPError as exc:
                    self.statuses[kind][type(exc).__name__] += 1
                index += 1

    def _flood(self, client: httpx.Client, index: int) -> int:
        body, auth = self.flood[index % len(self.flood)]
        return client.post("/predict", content=body, auth=auth, headers={"content-type": "application/json"}).status_code

    def _slow(self, client: httpx.Client, index: int) -> int:
        body = {"tasks": [{"id": 200 + index, "data": {"image": f"{self.media_url}/trickle"}}], "project": f"{PROJECT}.1"}
        return client.post("/predict", json=body, auth=AUTH).status_code

    def _webhook(self, client: httpx.Client, index: int) -> int:
        body = self.webhooks[index % len(self.webhooks)]
        return client.post("/webhook", content=body, headers={"content-type": "application/json"}).status_code

    def start(self) -> None:
        for kind, send, count in (("flood", self._flood, 20), ("slow", self._slow, 1), ("webhook", self._webhook, 4)):
            self.threads += [threading.Thread(target=self._loop, args=(kind, send)) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(180)


def run_attack(url: str, media_url: str, stop, results) -> None:
    attack = Attack(url, media_url, stop)
    attack.start()
    attack.join()
    results.put({kind: dict(counts) for kind, counts in attack.statuses.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predicts", type=int, default=40, help="well-behaved /predict requests per phase")
    parser.add_argument("--media-timeout", type=float, default=10.0, help="SEGGPT_MEDIA_TIMEOUT of the workers")
    parser.add_argument("--pin", action="store_true", help="serve and its workers on CPU 0, the clients and the attack on CPU 1")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {1})  # this process, and the attack process it spawns

    from label_studio_sdk.converter.brush import mask2rle
    import numpy as np

    from seggpt_core.research.shapes import make_scene
    from tests.ls_harness import free_port, wait_http
    from tests.ls_standin import StandInLabelStudio
    from tests.media_server import MediaServer
    from worker import EmbeddedRedis
    from worker.queue import queue_status

    config = json.loads((ROOT / "tests" / "recorded" / "setup.json").read_text())["body"]["schema"]
    with tempfile.TemporaryDirectory() as directory:
        media_dir = Path(directory) / "media"
        media_dir.mkdir()
        for seed in (1, 2, 3):
            buffer = io.BytesIO()
            make_scene(seed, size=(60, 80), must_include=("disc", "star")).image.save(buffer, format="PNG")
            (media_dir / f"scene{seed}.png").write_bytes(buffer.getvalue())
        media = MediaServer(media_dir)
        ls = StandInLabelStudio(media_dir)
        ls.projects[PROJECT] = {"id": PROJECT, "label_config": config}
        for task_id, seed in ((11, 1), (12, 2)):
            scene = make_scene(seed, size=(60, 80), must_include=("disc", "star"))
            result = [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "id": f"r{seed}{label}",
                       "value": {"format": "rle", "rle": mask2rle(scene.masks[shape].astype(np.uint8) * 255), "brushlabels": [label]}}
                      for label, shape in (("Cat", "disc"), ("Dog", "star"))]
            ls.add_task(PROJECT, task_id, f"{media.url}/scene{seed}.png", result)
        env = {**os.environ, "MODEL_DIR": directory, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": "0" * 40,
               "ALLOWED_MEDIA_HOSTS": media.host, "SEGGPT_MEDIA_TIMEOUT": str(args.media_timeout),
               "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1]}
        env.pop("REDIS_URL", None)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = subprocess.Popen(
            [*(["taskset", "-c", "0"] if args.pin else []), sys.executable, "-m", "backend.cli", "--log-level", "WARNING", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", "--weights", "random:tiny", "--device", "cpu"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        server = EmbeddedRedis(Path(directory) / "redis")
        context = multiprocessing.get_context("spawn")
        stop, results = context.Event(), context.Queue()
        attacker = context.Process(target=run_attack, args=(url, media.url, stop, results), daemon=True)
        statuses = {}
        try:
            wait_http(f"{url}/health", 60, "serve")
            connection = server.connect()
            while len(queue_status(connection)["workers"]) < 2:
                time.sleep(0.2)
            setup = httpx.post(f"{url}/setup", json={"project": f"{PROJECT}.1", "schema": config}, auth=AUTH, timeout=30)
            assert setup.status_code == 200, setup.text
            from backend.prompt_pool import PromptPool

            pool = PromptPool(connection, PROJECT)
            while pool.size() < 2:
                time.sleep(0.2)
            image = f"{media.url}/scene3.png"
            Phase(url, serve.pid, 5, image).run()  # warm-up
            quiet = Phase(url, serve.pid, args.predicts, image).run()
            attacker.start()
            time.sleep(5)  # the attack under way
            loud = Phase(url, serve.pid, args.predicts, image).run()
            stop.set()
            statuses = results.get(timeout=240)
            attacker.join(30)
            prompts_after = pool.size()
        finally:
            stop.set()
            if attacker.is_alive():
                attacker.kill()
            serve.terminate()
            serve.wait(60)
            server.stop()
            ls.stop()
            media.stop()
    print(f"serve --workers 2 (random:tiny, 80x60 targets), {os.cpu_count()} CPU cores (shared); {args.predicts} well-behaved "
          f"/predict per phase, /health every 50 ms; SEGGPT_MEDIA_TIMEOUT={args.media_timeout:g}"
          + ("; serve pinned to CPU 0, clients and attack to CPU 1" if args.pin else ""))
    print(f"{'phase':7s} {'predict_p50_ms':>14s} {'predict_p95_ms':>14s} {'health_p99_ms':>13s} {'health_max_ms':>13s} "
          f"{'health_n':>8s} {'serve_peak_rss_mb':>17s}")
    for name, phase in (("quiet", quiet), ("attack", loud)):
        print(f"{name:7s} {statistics.median(phase.predict_ms):14.1f} {percentile(phase.predict_ms, 95):14.1f} "
              f"{percentile(phase.health_ms, 99):13.1f} {max(phase.health_ms):13.1f} {len(phase.health_ms):8d} {phase.peak_rss / 1024:17.1f}")
    for kind, counts in statuses.items():
        print(f"attack {kind}: {dict(sorted(counts.items(), key=str))}")
    print(f"prompts in the pool after the attack: {prompts_after} (2 before)")
    print(f"ratio={percentile(loud.predict_ms, 95) / percentile(quiet.predict_ms, 95):.3f}")


if __name__ == "__main__":
    main()
