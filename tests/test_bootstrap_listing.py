"""Bootstrap reads a project's task list from Label Studio once: the pool sync and the choice of what to queue share
that one listing (a stand-in Label Studio counts the reads; a real Redis holds the queue, no worker is needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from backend.bootstrap import start_bootstrap
from backend.prompt_pool import PromptPool
from backend.services import build_services
from backend.settings import Settings
from seggpt_core.research.shapes import make_scene
from worker import EmbeddedRedis

from .ls_standin import StandInLabelStudio
from .standin_scenes import brush_annotation, png_bytes
from .media_server import MediaServer

SETUP = json.loads((Path(__file__).parent / "recorded" / "setup.json").read_text())["body"]
PROJECT = 41
TASKS = 230  # three pages of the task list


@pytest.fixture()
def stack(tmp_path):
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    for seed in (1, 2):
        (media_dir / f"scene{seed}.png").write_bytes(png_bytes(make_scene(seed, size=(60, 80), must_include=("disc", "star")).image))
    media = MediaServer(media_dir)
    ls = StandInLabelStudio(media_dir)
    ls.projects[PROJECT] = {"id": PROJECT, "label_config": SETUP["schema"]}
    for task_id in range(1, TASKS + 1):
        seed = 1 + task_id % 2
        ls.add_task(PROJECT, task_id, f"{media.url}/scene{seed}.png", brush_annotation(seed) if task_id <= 2 else None)
    server = EmbeddedRedis(tmp_path / "redis")
    try:
        settings = Settings(weights="random:tiny", redis_url=server.url, label_studio_url=ls.url,
                            label_studio_api_key="0123456789abcdef0123456789abcdef01234567", allowed_media_hosts=(media.host,))
        yield server.connect(), build_services(settings), ls
    finally:
        ls.stop()
        media.stop()
        server.stop()


def _pages_read(ls: StandInLabelStudio, since: int) -> list[int]:
    return [int(re.search(r"[?&]page=(\d+)", path).group(1)) for path in ls.requests("GET", "/api/tasks?")[since:]]


def test_bootstrap_lists_the_project_once_and_queues_every_unlabeled_task(stack):
    connection, services, ls = stack
    batch = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64)
    assert PromptPool(connection, PROJECT).size() == 2  # the sync used the listing...
    assert batch.queued == TASKS - 2 and batch.skipped == 0  # ...and so did the choice of what to queue
    assert _pages_read(ls, 0) == [1, 2, 3]  # each page once (it was read twice, once per step)
    # a second run reads the list once more and skips what the first one queued (still in the queue: no worker)
    before = len(ls.requests("GET", "/api/tasks?"))
    again = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64)
    assert (again.queued, again.skipped_inflight) == (0, TASKS - 2)
    assert _pages_read(ls, before) == [1, 2, 3]
