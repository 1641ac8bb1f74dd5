"""Issue 24: forged and hostile input against the backend, on a real Redis with a real worker, and a stand-in Label
Studio whose state the tests set (and read back what the backend asked of it).

Webhooks are hints: nothing changes without a re-read, work is coalesced per project and waits behind /predict.
Bodies are bounded and authenticated before they are parsed; every malformed input gets a 4xx naming it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from urllib.parse import unquote_plus as unquote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.app import create_app
from backend.prompt_pool import PromptPool
from backend.settings import Settings
from worker import EmbeddedRedis, enqueue_noop, fetch_job, get_queue

from .ls_standin import StandInLabelStudio
from .standin_scenes import add_scene_project, png_bytes, scene
from .media_server import MediaServer
from .queue_helpers import start_worker, wait_for

RECORDED = Path(__file__).parent / "recorded"
SETUP = json.loads((RECORDED / "setup.json").read_text())["body"]
CONFIG = SETUP["schema"]
AUTH = ("u", "p")
PROJECT = 31  # every test here works on this project unless it says otherwise


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Embedded Redis, one model worker (both queues) and one control worker that read the stand-in Label Studio, a
    media server, and the app with Basic auth (in-process, as uvicorn runs it)."""
    root = tmp_path_factory.mktemp("hostile")
    media_dir = root / "media"
    media_dir.mkdir()
    for seed in (1, 2, 3, 4):
        (media_dir / f"scene{seed}.png").write_bytes(png_bytes(scene(seed).image))
    (media_dir / "large.png").write_bytes(png_bytes(Image.new("RGB", (400, 300), (10, 20, 30))))  # 120,000 pixels
    (media_dir / "target.png").write_bytes(png_bytes(scene(5).image))
    media = MediaServer(media_dir)
    ls = StandInLabelStudio(media_dir)
    add_scene_project(ls, PROJECT, CONFIG, media.url)
    server = EmbeddedRedis(root / "redis")
    connection = server.connect()
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": "0123456789abcdef0123456789abcdef01234567",
           "ALLOWED_MEDIA_HOSTS": media.host, "SEGGPT_MEDIA_TIMEOUT": "2", "SEGGPT_MAX_PIXELS": "100000"}
    worker = start_worker(root, "seggpt-interactive", "--queue", "seggpt", log=root / "worker.log", env=env)
    control = start_worker(root, "seggpt-control", "--control", log=root / "control.log", env=env)
    settings = Settings(weights="random:tiny", device="cpu", redis_url=server.url, label_studio_url=ls.url,
                        label_studio_api_key=env["LABEL_STUDIO_API_KEY"], allowed_media_hosts=(media.host,), predict_budget=60,
                        media_timeout=2, basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1], tune_steps=3)
    with TestClient(create_app(settings)) as client:
        client.auth = AUTH
        # Label Studio connects the model: /setup saves the config and syncs the pool from the annotated tasks
        assert client.post("/setup", json={**SETUP, "project": f"{PROJECT}.1"}).status_code == 200
        pool = PromptPool(connection, PROJECT)
        wait_for(lambda: pool.size() == 2, 120, what="the pool sync after /setup")
        yield {"client": client, "redis": connection, "media": media, "ls": ls, "settings": settings, "worker": worker,
               "control": control, "pool": pool, "root": root}
    for process in (worker, control):
        process.terminate()
        process.wait(30)
    ls.stop()
    media.stop()
    server.stop()


def _finished(stack, job_id: str, timeout: float = 120):
    job = fetch_job(stack["redis"], job_id)
    wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), timeout, what=f"job {job_id}")
    assert job.get_status() == "finished", job.latest_result().exc_string
    return job.return_value()


class _Paused:
    """Both workers stopped (SIGSTOP) for the block: what is queued meanwhile stays queued, for the test to count."""

    def __init__(self, stack) -> None:
        self.pids = [stack["worker"].pid, stack["control"].pid]

    def __enter__(self):
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)


def _hint_jobs(stack, queue: str = "seggpt-control") -> list[str]:
    return [j for j in get_queue(stack["redis"], queue).job_ids if j.startswith(f"hint-") and j.split("-")[2] == str(PROJECT)]


def test_a_forged_tasks_deleted_removes_nothing_that_label_studio_still_has(stack):
    client, ls, pool = stack["client"], stack["ls"], stack["pool"]
    forged = {"action": "TASKS_DELETED", "project": {"id": PROJECT}, "tasks": [{"id": 11}, {"id": 12}]}
    before = len(ls.requests("GET", "/api/tasks?"))
    answer = client.post("/webhook", json=forged, auth=None).json()
    assert answer["status"] == "queued" and answer["tasks"] == 2
    outcome = _finished(stack, answer["job"])
    assert outcome["tasks"] == {"11": ["Cat", "Dog"], "12": ["Cat", "Dog"]}  # re-read: both still there
    assert pool.size() == 2 and {e["task"] for e in pool.entries()} == {11, 12}
    # Label Studio was asked, for exactly these tasks, through the task list (GET /api/tasks/<id> would make Label
    # Studio call /predict, which would wait for the worker doing the read)
    (read,) = ls.requests("GET", "/api/tasks?")[before:]
    assert '"included": [11, 12]' in unquote(read) and f"project={PROJECT}" in read
    assert not ls.requests("GET", "/api/tasks/")
    # once Label Studio says a task is gone, its prompt goes, and only its prompt
    removed = ls.tasks.pop(11), ls.annotations.pop(11)
    try:
        answer = client.post("/webhook", json=forged, auth=None).json()
        assert _finished(stack, answer["job"])["tasks"]["11"] == "deleted"
        assert {e["task"] for e in pool.entries()} == {12}
    finally:
        ls.tasks[11], ls.annotations[11] = removed
        answer = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": PROJECT}, "annotation": {"id": 110, "task": 11}}, auth=None).json()
        _finished(stack, answer["job"])
    assert pool.size() == 2


def test_repeated_events_are_one_job_per_project_and_kind_and_wait_behind_predict(stack):
    """500 identical ANNOTATION_CREATED, 3 START_TRAINING and 50 TASKS_CREATED while the worker is busy: one pool
    job, one tuning, one pre-labeling. A /predict sent after them is answered first."""
    client, ls, media, pool = stack["client"], stack["ls"], stack["media"], stack["pool"]
    event = {"action": "ANNOTATION_CREATED", "project": {"id": PROJECT}, "annotation": {"id": 120, "task": 12}}
    reads_before = len(ls.requests("GET", "/api/tasks?"))
    training = {"action": "START_TRAINING", "project": {"id": PROJECT, "label_config": CONFIG}}
    imported = {"action": "TASKS_CREATED", "project": {"id": PROJECT}, "tasks": [{"id": 13}, {"id": 14}, {"id": 99999}]}
    answers: dict[str, list] = {"pool": [], "tune": [], "prelabel": []}
    predicted: dict = {}
    with _Paused(stack):
        paused_at = time.monotonic()
        # a worker stopped inside its blocking dequeue still receives the first job pushed after: give each this one
        enqueue_noop(stack["redis"], queue="seggpt")
        enqueue_noop(stack["redis"], queue="seggpt-control")
        for _ in range(500):
            answers["pool"].append(client.post("/webhook", json=event, auth=None).json())
        assert client.post("/webhook", json=training, auth=None).status_code == 401  # forged: no credentials
        for _ in range(3):
            answers["tune"].append(client.post("/webhook", json=training).json())  # as Label Studio sends it
        for _ in range(50):
            answers["prelabel"].append(client.post("/webhook", json=imported, auth=None).json())
        for kind, replies in answers.items():
            assert [r["status"] for r in replies].count("queued") == 1, (kind, replies[:2])
            assert len({r["job"] for r in replies}) == 1, kind  # the repeats name the waiting job
        # (the annotation also queues its review record, a kind of its own)
        assert sorted(j.split("-")[1] for j in _hint_jobs(stack)) == ["pool", "prelabel", "review", "tune"]
        # a /predict arrives after all that: its job goes on the interactive queue, which the model worker takes first,
        # and the control worker starts none of the hint jobs while a /predict is queued or running
        task = {"id": 500, "data": {"image": f"{media.url}/target.png"}}
        thread = threading.Thread(target=lambda: predicted.update(client.post("/predict", json={"tasks": [task], "project": f"{PROJECT}.1"}).json()))
        thread.start()
        wait_for(lambda: get_queue(stack["redis"], "seggpt-interactive").count == 1, 30, what="the /predict job")
    thread.join(120)
    predict_fetch = [t for t, p in media.request_times if p == "/target.png" and t > paused_at]
    assert predicted["results"][0]["result"] and len(predict_fetch) == 1
    for kind in ("pool", "tune", "prelabel"):
        outcome = _finished(stack, answers[kind][0]["job"], 240)
        if kind == "tune":  # the control job re-read the prompts and queued the tuning itself for the model worker
            _finished(stack, outcome["training_job"], 240)
        if kind == "prelabel":  # the bootstrap reads the task list: 99999 is no task of the project
            assert outcome["queued"] == 2
    # nothing asked Label Studio anything before /predict's image was fetched: the hint jobs waited behind it
    assert min(t for t, *_ in ls.log if t > paused_at) > predict_fetch[0]
    # the 500 events cost one re-read of the task, and the tuning ran once
    reads = [unquote(p) for p in ls.requests("GET", "/api/tasks?")[reads_before:]]
    assert len([p for p in reads if '"included": [12]' in p]) == 1, reads
    assert pool.learned_prompts()
    wait_for(lambda: _hint_jobs(stack) == [], 120, what="the review job too")  # every kind ran once, none is left
    wait_for(lambda: {13, 14} <= {p["task"] for p in ls.predictions}, 120, what="the pre-labeled tasks")
    assert 99999 not in {p["task"] for p in ls.predictions}


def test_fan_out_is_bounded_by_the_project_not_by_the_body(stack):
    """A forged ANNOTATIONS_CREATED naming 3,000 tasks: one pass over the project's task list, not 3,000 reads."""
    client, ls, pool = stack["client"], stack["ls"], stack["pool"]
    forged = {"action": "ANNOTATIONS_CREATED", "project": {"id": PROJECT}, "annotation": [{"id": i, "task": 1000 + i} for i in range(3000)]}
    start = len(ls.log)
    answer = client.post("/webhook", json=forged, auth=None).json()
    assert answer["tasks"] == 3000
    outcome = _finished(stack, answer["job"])
    assert outcome["full"] is True and outcome["entries"] == 2 and pool.size() == 2
    paths = [p for _, m, p, _ in ls.log[start:] if m == "GET"]
    # one page of the project's annotated tasks, not a read (or a selection) of the 3,000 named tasks
    listed = [unquote(p) for p in paths if p.startswith("/api/tasks")]
    assert len(listed) == 1 and listed[0].startswith(f"/api/tasks?project={PROJECT}&page=1&page_size=100&fields=all&query=")
    assert "filter:tasks:total_annotations" in listed[0]


def test_forged_projects_ids_and_actions_leave_no_job_and_fixed_metric_names(stack):
    from prometheus_client.parser import text_string_to_metric_families

    client, redis = stack["client"], stack["redis"]
    failed_before = len(get_queue(redis, "seggpt-control").failed_job_registry)
    queued_before = [get_queue(redis, name).count for name in ("seggpt", "seggpt-interactive", "seggpt-control")]
    for project in (999, 0):
        answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}}).json()
        assert answer == {"status": "ignored", "reason": f"project {project} is not set up with this backend"}
    response = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": "abc"}, "tasks": [{"id": 1}]}, auth=None)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "project", "id"]
    answer = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": PROJECT}, "annotation": {"id": 5}}, auth=None).json()
    assert answer == {"status": "ignored", "reason": "no task in the event"}
    answer = client.post("/webhook", json={"action": "TASKS_DELETED", "project": {"id": PROJECT}, "tasks": [{"id": {"x": 1}}, {"id": 1.5}]}, auth=None).json()
    assert answer["status"] == "ignored"
    for action in ("A B", "a_b", "TASKS_CREATED\n# TYPE x counter"):
        assert client.post("/webhook", json={"action": action, "project": {"id": PROJECT}}, auth=None).json()["status"] == "ignored"
    assert [get_queue(redis, name).count for name in ("seggpt", "seggpt-interactive", "seggpt-control")] == queued_before
    assert len(get_queue(redis, "seggpt-control").failed_job_registry) == failed_before
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert families["seggpt_webhook_other"].samples[0].value >= 3
    assert not [name for name in families if name.startswith("seggpt_webhook_") and name[len("seggpt_webhook_"):].upper() not in
                {"OTHER", "TASKS_CREATED", "TASKS_DELETED", "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "START_TRAINING",
                 "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "PROJECT_UPDATED", "PROJECT_CREATED", "PROJECT_DELETED"}]


def test_a_webhook_secret_refuses_forged_calls_before_reading_them(stack):
    settings = stack["settings"].with_(webhook_secret="s3cret")
    event = {"action": "PROJECT_CREATED", "project": {"id": PROJECT}}
    with TestClient(create_app(settings)) as client:
        response = client.post("/webhook", content=b"{" * 500_000)
        assert response.status_code == 401 and "X-Seggpt-Webhook-Secret" in response.json()["detail"]
        assert client.post("/webhook", json=event, headers={"X-Seggpt-Webhook-Secret": "wrong"}).status_code == 401
        assert client.post("/webhook", json=event, headers={"X-Seggpt-Webhook-Secret": "s3cret"}).json()["status"] == "ignored"
        assert client.post("/webhook", json=event, auth=AUTH).status_code == 200  # START_TRAINING comes with Basic auth


def test_bodies_are_bounded_and_authenticated_before_they_are_parsed(stack):
    settings = stack["settings"].with_(max_body_bytes=2**20, max_webhook_bytes=64 * 1024)
    with TestClient(create_app(settings)) as client:
        junk = b"{" * (5 * 2**20)
        for path in ("/predict", "/setup", "/train"):
            response = client.post(path, content=junk)
            assert response.status_code == 401 and response.json() == {"detail": "HTTP Basic auth required"}, path
            assert client.post(path, content=b"{not json", auth=AUTH).status_code == 422, path
            response = client.post(path, content=junk, auth=AUTH)
            assert response.status_code == 413 and response.json() == {"detail": "request body larger than 1048576 bytes (SEGGPT_MAX_BODY_BYTES)"}
        chunked = client.post("/predict", content=(b"{" * 65536 for _ in range(32)), auth=AUTH)  # no Content-Length
        assert chunked.status_code == 413
        response = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": PROJECT}, "tasks": [{"id": i} for i in range(20000)]})
        assert response.status_code == 413 and "SEGGPT_MAX_WEBHOOK_BYTES" in response.json()["detail"]
        for path in ("/docs", "/openapi.json", "/versions", "/metrics"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, auth=AUTH).status_code == 200, path
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize("case,where,status", [
    ({"project": "abc"}, ["body", "project"], 422),
    ({"tasks": [{"id": {"x": 1}, "data": {"image": "x"}}]}, ["body", "tasks", 0, "id"], 422),
    ({"tasks": [{"id": 1.5, "data": {"image": "x"}}]}, ["body", "tasks", 0, "id"], 422),
    ({"tasks": [{"id": True, "data": {"image": "x"}}]}, ["body", "tasks", 0, "id"], 422),
    ({"tasks": [{"id": 1, "data": "a string"}]}, ["body", "tasks", 0, "data"], 422),
], ids=["project-abc", "id-object", "id-float", "id-bool", "data-string"])
def test_malformed_predict_bodies_get_a_4xx_naming_the_field_and_queue_nothing(stack, case, where, status):
    redis = stack["redis"]
    queued = get_queue(redis, "seggpt-interactive").count
    body = {"tasks": [{"id": 1, "data": {"image": "x"}}], "project": f"{PROJECT}.1", **case}
    response = stack["client"].post("/predict", json=body)
    assert response.status_code == status and response.json()["detail"][0]["loc"] == where, response.json()
    assert get_queue(redis, "seggpt-interactive").count == queued


def test_versions_and_train_refuse_a_project_that_is_not_an_id(stack):
    response = stack["client"].get("/versions", params={"project": "abc"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "project"]
    assert stack["client"].get("/versions", params={"project": f"{PROJECT}"}).status_code == 200
    response = stack["client"].post("/train", json={"project": "abc"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "project"]


def test_a_label_config_that_differs_from_the_saved_one_is_refused(stack):
    other = CONFIG.replace('<Label value="Dog"/>', '<Label value="Horse"/>')
    pool = stack["pool"]
    saved = pool.load_controls()
    task = {"id": 501, "data": {"image": f"{stack['media'].url}/scene1.png"}}
    response = stack["client"].post("/predict", json={"tasks": [task], "project": f"{PROJECT}.1", "label_config": other})
    assert response.status_code == 409
    assert response.json()["detail"] == (f"label_config differs from the one saved for project {PROJECT} by /setup "
                                         "(controls tag(Cat,Horse) against tag(Cat,Dog)); send it to /setup first")
    assert pool.load_controls() == saved
    # the same controls written differently are the same configuration
    same = stack["client"].post("/predict", json={"tasks": [task], "project": f"{PROJECT}.1", "label_config": CONFIG.replace("\n", " ")})
    assert same.status_code == 200 and same.json()["results"][0]["result"]


def test_a_trickling_host_and_a_large_image_are_final_image_errors_and_are_not_retried(stack):
    """The worker runs with SEGGPT_MEDIA_TIMEOUT=2 and SEGGPT_MAX_PIXELS=100000."""
    media = stack["media"]
    tasks = [{"id": 502, "data": {"image": f"{media.url}/trickle"}}, {"id": 503, "data": {"image": f"{media.url}/scene2.png"}},
             {"id": 505, "data": {"image": f"{media.url}/large.png"}}]
    before = media.requests.count("/trickle")
    started = time.monotonic()
    trickle, good, large = stack["client"].post("/predict", json={"tasks": tasks, "project": f"{PROJECT}.1"}).json()["results"]
    elapsed = time.monotonic() - started
    assert trickle == {"result": [], "score": 0.0, "model_version": good["model_version"]}  # final: Label Studio keeps it
    assert good["result"]
    assert large == {"result": [], "score": 0.0, "model_version": good["model_version"]}
    assert media.requests.count("/trickle") - before == 1  # one fetch, not a retry storm
    assert elapsed < 30  # SEGGPT_MEDIA_TIMEOUT is 2 s here; the trickle alone would take 5.5 hours
    log = (stack["root"] / "worker.log").read_text()
    assert "too slow; given up (final)" in log
    assert "image is 400x300 = 120000 pixels, more than the limit 100000" in log


def test_media_paths_and_presigned_redirects_are_checked(stack):
    from backend.ls_client import LabelStudioClient
    from backend.media import MediaError, MediaFetcher

    ls, media = stack["ls"], stack["media"]
    client = LabelStudioClient(ls.url, "0123456789abcdef0123456789abcdef01234567")
    fetcher = MediaFetcher(client, (media.host,), timeout=5)
    for value in ("/data/../api/current-user/whoami", "/data/upload/%2e%2e/%2e%2e/api/current-user/whoami", "/data/upload/..\\..\\api/x"):
        with pytest.raises(MediaError, match="leaves Label Studio's media paths"):
            fetcher.fetch(value, 1)
    assert not ls.requests("GET", "/api/current-user")
    assert fetcher.fetch("/data/upload/31/scene1.png", 1)[:4] == b"\x89PNG"
    ls.presign_target = "http://127.0.0.1:9/elsewhere.png"  # cloud storage that is not an allowed host
    with pytest.raises(MediaError, match="host 127.0.0.1:9 is not allowed"):
        fetcher.fetch("s3://bucket/key.png", 1)
    ls.presign_target = f"{media.url}/scene1.png"  # an allowed host
    assert fetcher.fetch("s3://bucket/key.png", 1)[:4] == b"\x89PNG"


def test_an_empty_result_scores_0():
    """A 1x1 image left every mask empty and was scored 0.97 from the labels' scores: nothing found scores 0."""
    from backend.label_config import parse_label_config
    from backend.ls_format import label_key, prediction_for

    controls = parse_label_config(CONFIG)
    empty = {label_key("tag", label): np.zeros((1, 1), dtype=bool) for label in ("Cat", "Dog")}
    scores = {key: 0.97 for key in empty}
    assert prediction_for(7, controls, empty, scores, "v") == {"result": [], "score": 0.0, "model_version": "v"}
    found = {**empty, label_key("tag", "Cat"): np.ones((1, 1), dtype=bool)}
    assert prediction_for(7, controls, found, scores, "v")["score"] == 0.97
