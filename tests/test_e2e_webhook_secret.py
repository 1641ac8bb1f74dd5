"""SEGGPT_WEBHOOK_SECRET with a real Label Studio 1.23.2: the webhook that connecting the model creates carries no
custom header, so its events are refused; once the header is set on that webhook (as the README says), events get
through, and START_TRAINING (sent by Label Studio's ML client with Basic auth, without the webhook's headers) too."""

from __future__ import annotations

import time

import pytest

from seggpt_core.research.shapes import make_scene

from .ls_harness import brush_result, start_backend
from .media_server import MediaServer
from .queue_helpers import png_bytes, wait_for

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="img" value="$image"/>
  <BrushLabels name="mask" toName="img"><Label value="Disc"/><Label value="Star"/></BrushLabels>
</View>"""
SECRET = "webhook-secret-1"


def _annotate(label_studio, task: dict, seed: int) -> None:
    scene = make_scene(seed, size=(64, 80), must_include=("disc", "star"))
    label_studio.annotate(task["id"], [brush_result(scene.masks["disc"], "Disc", f"d{seed}", "mask", "img"),
                                       brush_result(scene.masks["star"], "Star", f"s{seed}", "mask", "img")])


def test_webhook_secret_as_a_custom_header_of_the_label_studio_webhook(label_studio, tmp_path):
    from backend.prompt_pool import PromptPool

    media_dir = tmp_path / "media"
    media_dir.mkdir()
    for seed in range(4):
        (media_dir / f"img{seed}.png").write_bytes(png_bytes(make_scene(seed, size=(64, 80), must_include=("disc", "star")).image))
    media = MediaServer(media_dir)
    backend = start_backend(tmp_path / "backend", label_studio, extra_env={
        "ALLOWED_MEDIA_HOSTS": media.host, "SEGGPT_WEBHOOK_SECRET": SECRET, "SEGGPT_TUNE_STEPS": "3"})
    try:
        project = label_studio.create_project("webhook secret", CONFIG)
        label_studio.import_tasks(project, [{"image": f"{media.url}/img{seed}.png"} for seed in range(4)])
        tasks = label_studio.tasks(project)
        _annotate(label_studio, tasks[0], 0)
        ml = label_studio.connect_backend(project, backend.url, backend.user, backend.password)  # /setup: the pool syncs
        pool = PromptPool(backend.redis(), project)
        wait_for(lambda: pool.size() == 1, 120, what="the pool sync after /setup")

        _annotate(label_studio, tasks[1], 1)  # the webhook has no header yet: refused
        wait_for(lambda: '"POST /webhook HTTP/1.1" 401' in backend.log.read_text(), 30, what="the refused webhook")
        time.sleep(2)
        assert {e["task"] for e in pool.entries()} == {tasks[0]["id"]}

        hooks = label_studio.api("GET", "/api/webhooks/", params={"project": project}).json()
        (hook,) = [h for h in hooks if h["url"] == f"{backend.url}/webhook"]
        label_studio.api("PATCH", f"/api/webhooks/{hook['id']}/", json={"headers": {"X-Seggpt-Webhook-Secret": SECRET}})
        _annotate(label_studio, tasks[2], 2)  # now with the header: re-read into the pool
        wait_for(lambda: tasks[2]["id"] in {e["task"] for e in pool.entries()}, 120, interval=0.5, what="the annotation to reach the pool")

        label_studio.api("POST", f"/api/ml/{ml['id']}/train")  # START_TRAINING, with Basic auth and no custom header
        wait_for(lambda: pool.learned_prompts().get("image"), 180, interval=0.5, what="the tuning that START_TRAINING queued")
    finally:
        backend.stop()
        media.stop()
