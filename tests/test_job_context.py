"""Jobs take an explicit `JobContext`: job functions called directly, with a context built in the test, on a real
Redis; and the split of work between model workers and the torch-free control worker, through real processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.app import create_app
from backend.cli.common import CLI_COMMAND
from backend.control_jobs import sync_pool
from backend.job_context import build_job_context
from backend.prompt_pool import PromptPool
from backend.settings import Settings
from backend.webhook_hints import apply_pool_hints, note_hints
from worker import EmbeddedRedis, JobContext, enqueue_call, enqueue_noop, fetch_job, get_queue, store_prompt_set
from worker.codec import b64png_to_mask
from worker.context import NoModelHere
from worker.keys import results_key
from worker.model_jobs import noop, segment_chunk
from worker.payloads import ChunkProgress, PredictionOptions, PromptSetRef, SegmentationChunk, SinkSpec, TaskRef
from worker.prompt_sets import PromptRecord
from worker.runtime import ModelSettings, WorkerRuntime

from .ls_standin import StandInLabelStudio
from .standin_scenes import add_scene_project, png_bytes, scene
from .media_server import MediaServer
from .queue_helpers import wait_for, worker_env
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

SAMPLES = Path(__file__).resolve().parent.parent / "backend" / "samples"
PROJECT = 41
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="Cat"/><Label value="Dog"/></BrushLabels></View>')
TOKEN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def label_studio_stand_in(tmp_path_factory):
    """A stand-in Label Studio with project PROJECT: tasks 11 and 12 annotated (Cat: the disc, Dog: the star), 13 and
    14 not; their images on a media server."""
    root = tmp_path_factory.mktemp("context-media")
    for seed in (1, 2, 3, 4):
        (root / f"scene{seed}.png").write_bytes(png_bytes(scene(seed).image))
    media = MediaServer(root)
    ls = StandInLabelStudio(root)
    add_scene_project(ls, PROJECT, CONFIG, media.url)
    yield ls, media
    ls.stop()
    media.stop()


@pytest.fixture
def redis_server(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    yield server
    server.stop()


def _settings(ls, media, **extra) -> Settings:
    return Settings(label_studio_url=ls.url, label_studio_api_key=TOKEN, allowed_media_hosts=(media.host,), **extra)


def test_a_control_job_runs_directly_with_a_context_built_here(label_studio_stand_in, redis_server):
    ls, media = label_studio_stand_in
    connection = redis_server.connect()
    context = build_job_context(connection, _settings(ls, media))
    assert context.runtime is None  # a control worker's context: no model
    report = sync_pool({"project": PROJECT, "label_config": CONFIG}, context)
    assert report["entries"] == 2 and report["errors"] == {}
    pool = PromptPool(connection, PROJECT)
    by_task = {entry["task"]: entry for entry in pool.entries()}
    assert set(by_task) == {11, 12}
    for task_id, seed in ((11, 1), (12, 2)):  # the masks are the annotated shapes, read back from Label Studio's RLE
        masks = pool.entry_masks(by_task[task_id])
        assert np.array_equal(masks["tag\x1fCat"], scene(seed).masks["disc"])
        assert np.array_equal(masks["tag\x1fDog"], scene(seed).masks["star"])
    # a webhook's job, given the hints an event left: re-reads exactly the hinted task through the context's client
    before = len(ls.requests("GET", "/api/tasks?"))
    note_hints(connection, PROJECT, "pool", [12])
    outcome = apply_pool_hints({"project": PROJECT, "weights_digest": "d" * 16}, context)
    assert outcome["tasks"] == {"12": ["Cat", "Dog"]} and len(ls.requests("GET", "/api/tasks?")) == before + 1
    # a job that needs the model says so in a control worker's context, rather than loading one
    with pytest.raises(NoModelHere):
        segment_chunk(SegmentationChunk(PromptSetRef(None), (), "ns", SinkSpec("redis"), PredictionOptions(), None, None).to_json(), context)


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _mask(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("L")) > 127


def test_segment_chunk_runs_directly_and_paints_the_marked_class_where_it_is(redis_server):
    """The shipped tiny-appearance model in a runtime built here, a prompt that marks `dotted` and `striped` in one
    sample image, and a chunk of another sample image: the masks lie on the ground truth's blobs."""
    connection = redis_server.connect()
    runtime = WorkerRuntime(ModelSettings(weights="tiny-appearance", device="cpu"))
    context = JobContext(connection, runtime)  # the job layer's own sources and sinks: a file path, the redis sink
    prompt = PromptRecord(_sample("prompt.png"), {"dotted": _mask("prompt_dotted.png"), "striped": _mask("prompt_striped.png")})
    digest = store_prompt_set(connection, [prompt])
    chunk = SegmentationChunk(PromptSetRef(digest), (TaskRef("t1", {"path": str(SAMPLES / "target_1.png")}),), "direct",
                              SinkSpec("redis"), PredictionOptions(), None, None)
    job = Job.create("worker.model_jobs.segment_chunk", args=[chunk.to_json()], connection=connection, serializer=JSONSerializer)
    assert segment_chunk(chunk.to_json(), context.for_job(job)) == {"total": 1, "done": 1, "failed": {}}
    stored = __import__("json").loads(connection.hget(results_key("direct"), "t1"))
    for label in ("dotted", "striped"):
        predicted = b64png_to_mask(stored["labels"][label]["mask"])
        truth = _mask(f"truth/target_1_{label}.png")
        iou = (predicted & truth).sum() / max(1, (predicted | truth).sum())
        assert iou > 0.4, (label, iou)  # the README's demo: mIoU 0.70 over six images
        assert predicted[truth].mean() > 0.5  # most of the object is painted...
        assert predicted[~truth].mean() < 0.1  # ...and little of the rest (look-alikes included)
    # where the run's time went, by stage, for bench/multihost.py and the worker's log
    progress = ChunkProgress.from_meta(job.meta)
    assert {"load", "inputs", "forward", "writes"} <= set(progress.stages) and progress.stages["forward"] > 0
    assert progress.helper_cpu["load"] > 0 and progress.helper_cpu["write"] > 0  # the threads beside the forward
    assert sum(progress.stages.values()) <= progress.seconds + 0.01
    assert noop({"echo": 3}, context) == {"echo": 3}


def _start(model_dir: Path, *args: str, log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([*CLI_COMMAND, "worker", *args], env=worker_env(model_dir, **env), stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec())


def test_a_model_worker_never_receives_a_control_job_and_the_control_worker_has_no_torch(label_studio_stand_in, tmp_path):
    """A model worker and a control worker with their default queues, and the app: /setup, webhooks and their
    bootstrap. Every control job runs on the control worker, every chunk on the model worker, and the control
    worker's process never loads torch."""
    ls, media = label_studio_stand_in
    server = EmbeddedRedis(tmp_path / "redis")
    connection = server.connect()
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": TOKEN, "ALLOWED_MEDIA_HOSTS": media.host,
           "SEGGPT_WEIGHTS": "random:tiny", "SEGGPT_DEVICE": "cpu"}
    model = _start(tmp_path, log=tmp_path / "model.log", env=env)
    control = _start(tmp_path, "--control", log=tmp_path / "control.log", env=env)
    settings = _settings(ls, media, weights="random:tiny", device="cpu", redis_url=server.url, predict_budget=60)
    try:
        # a model worker refuses the control queue outright
        refused = subprocess.run([*CLI_COMMAND, "worker", "--queue", "seggpt-control", "--weights", "random:tiny"],
                                 env=worker_env(tmp_path, **env), capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "a model worker never takes it" in refused.stderr
        with TestClient(create_app(settings)) as client:
            assert client.post("/setup", json={"project": f"{PROJECT}.1", "schema": CONFIG}).status_code == 200
            pool = PromptPool(connection, PROJECT)
            wait_for(lambda: pool.size() == 2, 120, what="the pool sync after /setup")
            answers = [client.post("/webhook", json=event, auth=None).json() for event in (
                {"action": "ANNOTATION_UPDATED", "project": {"id": PROJECT}, "annotation": {"id": 110, "task": 11}},
                {"action": "TASKS_CREATED", "project": {"id": PROJECT}, "tasks": [{"id": 13}, {"id": 14}]})]
            control_ids = [answer["job"] for answer in answers]
            for job_id in control_ids:
                wait_for(lambda: fetch_job(connection, job_id).get_status() in ("finished", "failed"), 120, what=job_id)
            prelabel = fetch_job(connection, control_ids[1]).return_value()
            assert prelabel["queued"] == 2
            for job_id in prelabel["jobs"]:
                wait_for(lambda: fetch_job(connection, job_id).get_status() in ("finished", "failed"), 120, what=job_id)
            wait_for(lambda: {13, 14} <= {p["task"] for p in ls.predictions}, 60, what="the pre-labels")
        control_queue, model_queues = get_queue(connection, "seggpt-control"), ("seggpt", "seggpt-interactive")
        ran = {name: list(get_queue(connection, name).finished_job_registry.get_job_ids()) for name in ("seggpt-control", *model_queues)}
        assert len(ran["seggpt-control"]) >= 4, ran  # the /setup sync, the pool hints, the review record, the pre-labeling
        names = {job_id: fetch_job(connection, job_id).worker_name for ids in ran.values() for job_id in ids}
        control_name = {names[job_id] for job_id in ran["seggpt-control"]}
        model_name = {names[job_id] for name in model_queues for job_id in ran[name]}
        assert len(control_name) == 1 and len(model_name) == 1 and control_name != model_name, names
        assert set(prelabel["jobs"]) <= set(ran["seggpt"])  # the chunks it planned ran on the model worker
        assert not control_queue.failed_job_registry.count
        # the control worker's own process, after all that work: no torch module, no torch library mapped
        probe = enqueue_call(connection, "tests.process_probe.loaded_top_modules", {}, queue="seggpt-control")
        wait_for(lambda: probe.get_status(refresh=True) == "finished", 60, what="the probe")
        modules = probe.return_value()
        assert "backend" in modules and "rq" in modules and "torch" not in modules, modules
        assert "libtorch" not in Path(f"/proc/{control.pid}/maps").read_text()
        assert "libtorch" in Path(f"/proc/{model.pid}/maps").read_text()  # the check can fail: the model worker has it
    finally:
        for process in (model, control):
            process.terminate()
            process.wait(30)
        server.stop()


def test_webhook_work_waits_behind_every_predict_on_the_control_worker(redis_server, tmp_path):
    """A control job queued with `yields_to` starts only once the queue it yields to holds nothing queued or running."""
    connection = redis_server.connect()
    interactive = get_queue(connection, "yield-interactive")
    blocking = enqueue_noop(connection, queue="yield-interactive")  # stands for a /predict no worker has taken yet
    waiting = enqueue_call(connection, "tests.process_probe.started_at", {}, queue="yield-control", yields_to=["yield-interactive"])
    control = _start(tmp_path, "--control", "--queue", "yield-control", log=tmp_path / "control.log", env={})
    try:
        started = get_queue(connection, "yield-control").started_job_registry
        wait_for(lambda: waiting.id in started, 60, interval=0.1, what="the control job to be taken")
        time.sleep(1.5)
        # taken (it heartbeats, so its liveness holds), and holding back
        assert waiting.id in started and waiting.get_status(refresh=True) == "queued" and interactive.count == 1
        released = time.time()
        blocking.cancel()  # the /predict's job is gone from its queue
        wait_for(lambda: waiting.get_status(refresh=True) == "finished", 30, interval=0.1, what="the control job")
        assert waiting.return_value() >= released
    finally:
        control.terminate()
        control.wait(30)


@pytest.mark.fault
def test_a_control_job_whose_worker_died_is_run_again_by_the_next_control_worker(tmp_path):
    """The control queue has the model queues' liveness: a control worker SIGKILLed mid-job stops heartbeating, and
    the next control worker's sweep puts the job back in its queue and runs it."""
    server = EmbeddedRedis(tmp_path / "redis")
    connection = server.connect()
    timing = ("--heartbeat-interval", "1", "--maintenance-interval", "2")
    first = _start(tmp_path, "--control", *timing, log=tmp_path / "first.log", env={})
    second = None
    try:
        job = enqueue_call(connection, "tests.process_probe.sleep_then_stamp", {"seconds": 4, "key": "stamp"}, queue="seggpt-control")
        wait_for(lambda: job.get_status(refresh=True) == "started", 60, interval=0.1, what="the job to start")
        first.kill()
        first.wait(10)
        assert connection.get("stamp") is None
        second = _start(tmp_path, "--control", *timing, log=tmp_path / "second.log", env={})
        wait_for(lambda: job.get_status(refresh=True) == "finished", 90, interval=0.3, what="the job to run again")
        assert int(connection.get("stamp")) == 1 and job.worker_name != ""
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        server.stop()
