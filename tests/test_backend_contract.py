"""The HTTP contract, replayed from the bodies a real Label Studio 1.23.2 sent, on a real Redis with a real worker;
and bad input, one task at a time, while the rest of the batch goes on."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.app import create_app
from backend.label_config import LabelConfigError, parse_label_config
from backend.prompt_pool import PromptPool
from backend.settings import Settings
from seggpt_core.research.shapes import make_scene
from worker import EmbeddedRedis

from .media_server import MediaServer
from .queue_helpers import start_worker, wait_for

RECORDED = Path(__file__).parent / "recorded"  # copies of shared/reference/ls-1.23.2-requests


def recorded(name: str) -> dict:
    """A request body as a real Label Studio 1.23.2 sent it."""
    return json.loads((RECORDED / name).read_text())["body"]


CONFIG = recorded("setup.json")["schema"]


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def _bad_and_good_images(directory: Path) -> dict[str, str]:
    """name -> what it is. Written into the media server's folder."""
    base = make_scene(500, size=(60, 80)).image
    files = {
        "good.png": _png(base),
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20,
        "truncated.jpg": _png(base, format="JPEG")[:300],
        "empty.png": b"",
        "huge.png": _png(Image.new("1", (15000, 11000))),
        "cmyk.jpg": _png(base.convert("CMYK"), format="JPEG"),
        "sixteen.png": _png(Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)),
        "palette.png": _png(base.convert("P")),
        "rgba.png": _png(base.convert("RGBA")),
    }
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        files[f"exif{orientation}.jpg"] = _png(base, format="JPEG", exif=exif.tobytes())
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Embedded Redis, one model worker process and one control worker, a media server, and the app (in-process, as
    uvicorn would run it)."""
    root = tmp_path_factory.mktemp("contract")
    media_dir = root / "media"
    media_dir.mkdir()
    files = _bad_and_good_images(media_dir)
    media = MediaServer(media_dir)
    server = EmbeddedRedis(root / "redis")
    connection = server.connect()
    worker = start_worker(root, "seggpt-interactive", "--queue", "seggpt", log=root / "worker.log", env={"ALLOWED_MEDIA_HOSTS": media.host})
    control = start_worker(root, "seggpt-control", "--control", log=root / "control.log")
    settings = Settings(weights="random:tiny", device="cpu", redis_url=server.url, allowed_media_hosts=(media.host,), predict_budget=60)
    app = create_app(settings)
    with TestClient(app) as client:
        yield {"client": client, "redis": connection, "media": media, "files": files, "settings": settings, "root": root}
    for process in (worker, control):
        process.terminate()
        process.wait(30)
    media.stop()
    server.stop()


def _fill_pool(stack, project: int, config: str) -> None:
    """Two prompts straight into the pool (the sync from Label Studio itself is covered end to end)."""
    from label_studio_sdk.converter.brush import mask2rle

    pool = PromptPool(stack["redis"], project)
    controls = parse_label_config(config)
    pool.save_controls(controls, config)
    for seed, task_id in ((1, 9001), (2, 9002)):
        scene = make_scene(seed, size=(60, 80), must_include=("disc", "star"))
        result = [
            {"from_name": "tag", "to_name": "image", "type": "brushlabels", "id": f"r{seed}{label}",
             "value": {"format": "rle", "rle": mask2rle(scene.masks[shape].astype(np.uint8) * 255), "brushlabels": [label]}}
            for label, shape in (("Cat", "disc"), ("Dog", "star"))
        ]
        data = _png(scene.image)
        pool.upsert({"id": task_id, "data": {"image": "x"}}, {"id": task_id, "result": result, "updated_at": str(seed)}, controls, lambda v, t, d=data: d)


def test_health_answers_like_the_recorded_exchange(stack):
    for path in ("/health", "/"):
        response = stack["client"].get(path)
        assert response.status_code == 200 and response.json()["status"] == "UP"


def test_setup_replay_returns_a_stable_model_version(stack):
    body = recorded("setup.json")
    first = stack["client"].post("/setup", json=body)
    assert first.status_code == 200
    version = first.json()["model_version"]
    assert version.startswith("seggpt-")
    assert stack["client"].post("/setup", json=body).json()["model_version"] == version


def test_setup_refuses_a_config_without_brush_or_polygon(stack):
    body = {**recorded("setup.json"), "schema": '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'}
    response = stack["client"].post("/setup", json=body)
    assert response.status_code == 422
    assert "no BrushLabels or PolygonLabels" in response.json()["detail"] and "Choices 'c'" in response.json()["detail"]


def test_an_unusable_label_config_gets_the_same_answer_on_every_route(stack):
    """One mapping of errors to answers (`backend.http_errors`): /setup answered 400 where the interactive /predict
    answered 422 for the same label config."""
    bad = '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'
    task = {"id": 1, "data": {"image": "http://127.0.0.1:9/x.png"}}
    context = {"result": [{"from_name": "kp", "to_name": "i", "type": "keypointlabels",
                           "value": {"x": 50, "y": 50, "keypointlabels": ["a"]}}]}
    answers = {
        "setup": stack["client"].post("/setup", json={**recorded("setup.json"), "project": "7301.1", "schema": bad}),
        "predict": stack["client"].post("/predict", json={"tasks": [task], "project": "7302.1", "label_config": bad}),
        "interactive": stack["client"].post("/predict", json={"tasks": [task], "project": "7303.1", "label_config": bad,
                                                              "params": {"context": context}}),
    }
    assert {route: answer.status_code for route, answer in answers.items()} == dict.fromkeys(answers, 422)
    assert all("no BrushLabels or PolygonLabels" in answer.json()["detail"] for answer in answers.values())


def test_malformed_bodies_get_422_naming_the_field(stack):
    response = stack["client"].post("/predict", json={"tasks": "not a list"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "tasks"]
    response = stack["client"].post("/setup", json={"project": "1.2"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "schema"]
    response = stack["client"].post("/predict", json={"tasks": [{"data": {}}], "project": "1"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "tasks", 0, "id"]


def test_predict_replay_returns_one_item_per_task_in_order(stack):
    body = recorded("predict.json")
    project = int(body["project"].split(".")[0]) + 100
    body = {**body, "project": f"{project}.1"}
    _fill_pool(stack, project, body["label_config"])
    good = f"{stack['media'].url}/good.png"
    for task in body["tasks"]:
        task["data"]["image"] = good  # the recorded URLs pointed at the recording machine
    response = stack["client"].post("/predict", json=body)
    assert response.status_code == 200
    answer = response.json()
    version = stack["client"].post("/setup", json={"project": f"{project}.1", "schema": body["label_config"]}).json()["model_version"]
    assert len(answer["results"]) == len(body["tasks"])
    for item in answer["results"]:
        assert item["model_version"] == version
        for region in item["result"]:
            assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
            assert (region["original_width"], region["original_height"]) == (80, 60)
    ids = [r["id"] for item in answer["results"] for r in item["result"]]
    assert len(ids) == len(set(ids))  # region ids are unique across tasks
    # the request's results are read once and gone; only its small closed flag stays, for its day
    closed = list(stack["redis"].scan_iter("seggpt:predict:*:closed"))
    assert closed and not list(stack["redis"].scan_iter("seggpt:predict:*:results"))
    assert all(0 < stack["redis"].ttl(key) <= 86400 for key in closed)


def test_bad_images_fail_alone_with_their_reason(stack, caplog):
    project = 4242
    _fill_pool(stack, project, CONFIG)
    media = stack["media"].url
    names = [n for n in stack["files"]] + ["missing.png", "page.html"]
    tasks = [{"id": 100 + i, "data": {"image": f"{media}/{name}"}} for i, name in enumerate(names)]
    tasks.append({"id": 999, "data": {"image": "http://example.org/elsewhere.png"}})
    tasks.append({"id": 998, "data": {"image": "http://127.0.0.1:9/loopback.png"}})
    with caplog.at_level(logging.ERROR, logger="backend.predict_service"):
        response = stack["client"].post("/predict", json={"tasks": tasks, "project": f"{project}.5", "label_config": CONFIG})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(tasks)
    by_name = dict(zip(names + ["disallowed", "loopback"], results))
    readable = ["good.png", "cmyk.jpg", "sixteen.png", "palette.png", "rgba.png"] + [f"exif{o}.jpg" for o in range(2, 9)]
    for name in readable:
        assert isinstance(by_name[name], dict) and by_name[name]["model_version"].startswith("seggpt-"), name
    for name in ("exif5.jpg", "exif6.jpg", "exif7.jpg", "exif8.jpg"):  # transposed: width and height swap
        for region in by_name[name]["result"]:
            assert (region["original_width"], region["original_height"]) == (60, 80), name
    reasons = {
        "corrupt.png": "corrupt or truncated",
        "truncated.jpg": "corrupt or truncated",
        "empty.png": "is empty",
        "huge.png": "more than the limit",
        "missing.png": "HTTP 404",
        "page.html": "text/html, not an image",
        "disallowed": "host example.org is not allowed",
        "loopback": "host 127.0.0.1:9 is not allowed",
    }
    logged = caplog.text
    for name, reason in reasons.items():
        assert by_name[name] == {"result": [], "score": 0.0, "model_version": by_name["good.png"]["model_version"]}, name
        assert reason in logged, (name, reason)


def test_webhooks_answer_at_once_and_enqueue(stack):
    """The recorded events of a project set up with this backend: each answers within Label Studio's 1 s, and what
    concerns the pool queues (or joins) the project's one pending job. Without a Label Studio in this stack the
    jobs cannot run: tests/test_hostile_input.py follows them through a stand-in one."""
    assert stack["client"].post("/setup", json=recorded("setup.json")).status_code == 200  # project 1
    for name, statuses in (("webhook_ANNOTATION_CREATED.json", ("queued", "coalesced")), ("webhook_ANNOTATIONS_DELETED.json", ("ignored",)),
                           ("webhook_TASKS_CREATED.json", ("queued", "coalesced")), ("webhook_ANNOTATIONS_CREATED.json", ("queued", "coalesced")),
                           ("webhook_TASKS_DELETED.json", ("ignored",)), ("webhook_PROJECT_UPDATED.json", ("queued", "coalesced"))):
        started = time.perf_counter()
        response = stack["client"].post("/webhook", json=recorded(name))
        elapsed = time.perf_counter() - started
        assert response.status_code == 200 and response.json()["status"] in statuses, (name, response.json())
        assert elapsed < 1.0  # Label Studio waits 1 s for a webhook
    # deletions that concern no prompt of the pool cost nothing
    assert stack["client"].post("/webhook", json=recorded("webhook_TASKS_DELETED.json")).json()["reason"] == "no prompt of the project is concerned"
    # issue 17 turned PROJECT_UPDATED from ignored into handled (the label config is re-read); the events that
    # concern neither the pool nor the controls are acknowledged and ignored
    for action in ("PROJECT_CREATED", "PROJECT_DELETED", "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED"):
        assert stack["client"].post("/webhook", json={"action": action, "project": {"id": 1}}).json()["status"] == "ignored", action
    bulk = recorded("webhook_ANNOTATIONS_CREATED.json")
    answer = stack["client"].post("/webhook", json=bulk).json()
    assert answer["tasks"] == len({a["task"] for a in bulk["annotation"]}) == 2 and answer["status"] in ("queued", "coalesced")


@pytest.mark.parametrize("route", ["webhook", "legacy-train"])
def test_training_tunes_a_prompt_that_changes_the_version_and_the_predictions(stack, route):
    from worker import fetch_job

    project = 4242 if route == "webhook" else 4243
    _fill_pool(stack, project, CONFIG)
    pool = PromptPool(stack["redis"], project)
    setup = {**recorded("setup.json"), "project": f"{project}.1"}
    before = stack["client"].post("/setup", json=setup).json()["model_version"]
    task = {"id": 7, "data": {"image": f"{stack['media'].url}/good.png"}}
    untuned = stack["client"].post("/predict", json={"tasks": [task], "project": f"{project}.1", "label_config": CONFIG}).json()["results"][0]
    with TestClient(create_app(stack["settings"].with_(tune_steps=12))) as client:
        if route == "webhook":
            event = {**recorded("webhook_START_TRAINING.json"), "project": {"id": project, "label_config": CONFIG}}
            answer = client.post("/webhook", json=event).json()
        else:
            answer = client.post("/train", json={**recorded("train_legacy_flag_off.json"), "project": f"{project}.17"}).json()
    assert answer["status"] == "queued"
    # a control job re-reads the prompts (no Label Studio in this stack: the pool as it is), then queues the tuning
    prepared = fetch_job(stack["redis"], answer["job"])
    wait_for(lambda: prepared.get_status(refresh=True) in ("finished", "failed"), 120, what="the control job")
    assert prepared.get_status() == "finished", prepared.latest_result().exc_string
    job = fetch_job(stack["redis"], prepared.return_value()["training_job"])
    wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), 120, what="the tuning job")
    assert job.get_status() == "finished", job.latest_result().exc_string
    outcome = job.return_value()
    field = outcome["fields"]["image"]
    assert field["examples"] == 2 and sorted(field["labels"]) == ["Cat", "Dog"]
    assert Path(field["path"]).is_file() and job.get_meta()["done"] == 12 == job.get_meta()["total"]
    assert pool.learned_prompts() == {"image": field["digest"]}
    after = stack["client"].post("/setup", json=setup).json()["model_version"]
    assert after != before and pool.version() == outcome["pool_version"]  # /setup tells Label Studio of the new version
    tuned = stack["client"].post("/predict", json={"tasks": [task], "project": f"{project}.1", "label_config": CONFIG}).json()["results"][0]
    assert tuned["model_version"] == after and {r["value"]["brushlabels"][0] for r in tuned["result"]} <= {"Cat", "Dog"}
    assert tuned["result"] != untuned["result"]  # painted from the learned prompt, not the pool's
    if route == "webhook":  # undo: back to the annotations, and to the version they give
        from backend.cli import main

        assert main(["train-prompt", "--redis-url", stack["settings"].redis_url, "--project", str(project), "--clear"]) == 0
        assert pool.learned_prompts() == {} and stack["client"].post("/setup", json=setup).json()["model_version"] == before


def test_training_without_labeled_tasks_fails_with_a_reason(stack):
    from worker import fetch_job

    with TestClient(create_app(stack["settings"].with_(tune_steps=3))) as client:
        answer = client.post("/train", json={"project": "5151.3", "label_config": CONFIG}).json()
    job = fetch_job(stack["redis"], answer["job"])
    wait_for(lambda: job.get_status(refresh=True) == "failed" and job.latest_result() is not None, 120, what="the job to fail")
    assert "no labeled task to tune a prompt on" in job.latest_result().exc_string
    assert client is not None and stack["client"].post("/train", json={"project": "x.y"}).status_code == 422


def test_metrics_count_requests(stack):
    stack["client"].post("/setup", json=recorded("setup.json"))
    text = stack["client"].get("/metrics").text
    assert "seggpt_setup_requests_total" in text and "seggpt_workers " in text


def test_basic_auth_guards_everything_but_health(stack):
    settings = stack["settings"].with_(basic_auth_user="u", basic_auth_pass="p")
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/setup", json=recorded("setup.json")).status_code == 401
        assert client.post("/setup", json=recorded("setup.json"), auth=("u", "wrong")).status_code == 401
        assert client.post("/setup", json=recorded("setup.json"), auth=("u", "p")).status_code == 200
        assert client.get("/metrics", auth=("u", "p")).status_code == 200


def test_label_configs_with_any_names_and_several_controls():
    config = """<View>
      <Image name="front" value="$front_url"/><Image name="side" value="$side"/>
      <BrushLabels name="paint" toName="front"><Label value="Wet road" /><Label value="Ölfleck"/></BrushLabels>
      <PolygonLabels name="shape" toName="side"><Label value="Car"/></PolygonLabels>
      <Choices name="weather" toName="front"><Choice value="sun"/></Choices>
    </View>"""
    controls = parse_label_config(config)
    assert [(c.name, c.kind, c.to_name, c.data_key, c.labels) for c in controls] == [
        ("paint", "brushlabels", "front", "front_url", ("Wet road", "Ölfleck")),
        ("shape", "polygonlabels", "side", "side", ("Car",)),
    ]
    with pytest.raises(LabelConfigError, match="empty"):
        parse_label_config("  ")
    with pytest.raises(LabelConfigError, match="cannot be parsed"):
        parse_label_config("<View><Image")


def test_transient_media_errors_are_retried_with_backoff(stack):
    """The image host answers 503 twice, then serves the image: the task still gets its prediction."""
    project = 4343
    _fill_pool(stack, project, CONFIG)
    media = stack["media"]
    (media.directory / "flaky.png").write_bytes(stack["files"]["good.png"])
    media.flaky_left = 2
    before = len([r for r in media.requests if r.startswith("/flaky")])
    response = stack["client"].post("/predict", json={"tasks": [{"id": 1, "data": {"image": f"{media.url}/flaky"}}],
                                                      "project": f"{project}.1", "label_config": CONFIG})
    (result,) = response.json()["results"]
    assert isinstance(result, dict) and result["model_version"].startswith("seggpt-")
    assert media.flaky_left == 0
    assert len([r for r in media.requests if r.startswith("/flaky")]) - before == 3  # two refusals, then the image
    assert all(region["original_width"] == 80 for region in result["result"])


def test_pool_version_is_cached_and_follows_every_change(stack):
    pool = PromptPool(stack["redis"], 4545)
    empty = pool.version()
    _fill_pool(stack, 4545, CONFIG)
    filled = pool.version()
    assert filled != empty and pool.version() == filled  # cached, same answer
    entry = pool.entries()[0]
    pool.remove_annotations([entry["annotation"]])
    assert pool.version() not in (filled, empty)
    pool.remove_task(pool.entries()[0]["task"])
    assert pool.size() == 0 and pool.version() == empty


def test_a_system_fault_stores_nothing_so_the_next_request_retries(stack):
    """The image host answers 503 (a system fault, as Label Studio's 5xx would be) past every retry: that task gets
    nothing (Label Studio stores nothing, and asks again), unlike a bad image's final empty result; once the host
    is back, the same request predicts it."""
    project = 4545
    _fill_pool(stack, project, CONFIG)
    media = stack["media"]
    (media.directory / "flaky.png").write_bytes(stack["files"]["good.png"])
    media.flaky_left = 10_000
    tasks = [{"id": 1, "data": {"image": f"{media.url}/flaky"}}, {"id": 2, "data": {"image": f"{media.url}/good.png"}},
             {"id": 3, "data": {"image": f"{media.url}/corrupt.png"}}]
    body = {"tasks": tasks, "project": f"{project}.1", "label_config": CONFIG}
    before = stack["client"].get("/metrics").text
    flaky, good, corrupt = stack["client"].post("/predict", json=body).json()["results"]
    assert flaky == []  # nothing to store: not an empty prediction
    assert isinstance(good, dict) and good["result"]
    assert corrupt == {"result": [], "score": 0.0, "model_version": good["model_version"]}  # the image's fault: final
    after = stack["client"].get("/metrics").text

    def counter(text: str, name: str) -> int:
        lines = [line for line in text.splitlines() if line.startswith(f"seggpt_{name}_total ")]
        return int(float(lines[0].split()[1])) if lines else 0

    assert counter(after, "predict_tasks_failed_system") == counter(before, "predict_tasks_failed_system") + 1
    assert counter(after, "tasks_failed_system") > counter(before, "tasks_failed_system")
    assert counter(after, "tasks_failed_input") > counter(before, "tasks_failed_input")
    media.flaky_left = 0
    retried = stack["client"].post("/predict", json={**body, "tasks": tasks[:1]}).json()["results"][0]
    assert isinstance(retried, dict) and retried["result"] and retried["model_version"] == good["model_version"]


def test_weights_that_no_one_can_name_give_503_not_a_wrong_version(stack):
    settings = stack["settings"].with_(weights="/nowhere/model.safetensors")
    with TestClient(create_app(settings)) as client:
        response = client.post("/setup", json=recorded("setup.json"))
        assert response.status_code == 503 and "SEGGPT_WEIGHTS_DIGEST" in response.json()["detail"]
    # a digest given by hand names them
    with TestClient(create_app(settings.with_(weights_digest="0123456789abcdef"))) as client:
        assert client.post("/setup", json=recorded("setup.json")).json()["model_version"].startswith("seggpt-")


def test_metrics_parse_as_prometheus_text_and_move_when_tasks_are_done(stack):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        families = {f.name: f for f in text_string_to_metric_families(stack["client"].get("/metrics").text)}
        return families

    def value(families: dict, family: str, sample: str, **labels) -> float:
        found = [s.value for s in families[family].samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
        return found[0] if found else 0.0

    project = 4646
    _fill_pool(stack, project, CONFIG)
    before = scrape()
    task = {"id": 1, "data": {"image": f"{stack['media'].url}/good.png"}}
    stack["client"].post("/predict", json={"tasks": [task], "project": f"{project}.1", "label_config": CONFIG})
    after = scrape()
    assert value(after, "seggpt_tasks_done", "seggpt_tasks_done_total") == value(before, "seggpt_tasks_done", "seggpt_tasks_done_total") + 1
    assert value(after, "seggpt_task_seconds", "seggpt_task_seconds_count") == value(before, "seggpt_task_seconds", "seggpt_task_seconds_count") + 1
    assert value(after, "seggpt_predict_request_seconds", "seggpt_predict_request_seconds_bucket", le="+Inf") == \
        value(before, "seggpt_predict_request_seconds", "seggpt_predict_request_seconds_bucket", le="+Inf") + 1
    assert value(after, "seggpt_queue_seggpt_interactive_queued", "seggpt_queue_seggpt_interactive_queued") == 0
    digests = [s.labels["weights_digest"] for s in after["seggpt_workers_by_weights"].samples]
    from seggpt_core.weights_digest import weights_digest

    assert digests == [weights_digest("random:tiny")] and value(after, "seggpt_workers", "seggpt_workers") == 1


def test_thresholds_reach_the_workers_and_the_version(stack):
    """Through the queue and a worker: a threshold above every score leaves every region out (empty, score 0) under
    a version of its own; without it, the same task gets its regions."""
    project = 4747
    _fill_pool(stack, project, CONFIG)
    task = {"id": 1, "data": {"image": f"{stack['media'].url}/good.png"}}
    body = {"tasks": [task], "project": f"{project}.1", "label_config": CONFIG}
    plain = stack["client"].post("/predict", json=body).json()["results"][0]
    assert plain["result"]
    with TestClient(create_app(stack["settings"].with_(score_threshold=1.0))) as client:
        strict = client.post("/predict", json=body).json()["results"][0]
    assert strict["result"] == [] and strict["score"] == 0.0 and strict["model_version"] != plain["model_version"]
    with TestClient(create_app(stack["settings"].with_(min_area="100%"))) as client:
        tiny = client.post("/predict", json=body).json()["results"][0]
    assert tiny["result"] == [] and tiny["score"] == 0.0
