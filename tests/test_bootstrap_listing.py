"""Bootstrap reads its prompts from the annotated tasks alone, then the project's task list once, queueing chunks
page by page as it is read (a stand-in Label Studio counts the reads and watches what was queued when each one
arrives; a real Redis holds the queue, no worker is needed)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from rq import Queue

from backend.bootstrap import load_batch, start_bootstrap
from backend.cli.common import CLI_COMMAND
from backend.ls_client import LabelStudioError
from backend.prompt_pool import PromptPool
from backend.services import build_services
from backend.settings import Settings
from seggpt_core.research.shapes import make_scene
from worker import EmbeddedRedis
from worker.payloads import ChunkProgress
from worker.queue import fetch_job

from .ls_standin import StandInLabelStudio
from .standin_scenes import brush_annotation, png_bytes
from .media_server import MediaServer
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

SETUP = json.loads((Path(__file__).parent / "recorded" / "setup.json").read_text())["body"]
PROJECT = 41
TASKS = 230  # three pages of the task list
ANNOTATED = (1, 2)


@pytest.fixture()
def stack(tmp_path, request):
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    for seed in (1, 2):
        (media_dir / f"scene{seed}.png").write_bytes(png_bytes(make_scene(seed, size=(60, 80), must_include=("disc", "star")).image))
    media = MediaServer(media_dir)
    ls = StandInLabelStudio(media_dir)
    ls.projects[PROJECT] = {"id": PROJECT, "label_config": SETUP["schema"]}
    for task_id in range(1, TASKS + 1):
        seed = 1 + task_id % 2
        annotated = task_id in getattr(request, "param", ANNOTATED)
        ls.add_task(PROJECT, task_id, f"{media.url}/scene{seed}.png", brush_annotation(seed) if annotated else None)
    server = EmbeddedRedis(tmp_path / "redis")
    try:
        settings = Settings(weights="random:tiny", redis_url=server.url, label_studio_url=ls.url, ls_deadline=3.0,
                            label_studio_api_key="0123456789abcdef0123456789abcdef01234567", allowed_media_hosts=(media.host,))
        yield server.connect(), build_services(settings), ls
    finally:
        ls.stop()
        media.stop()
        server.stop()


def _listings(ls: StandInLabelStudio, since: int = 0) -> list[tuple[str, int]]:
    """("annotated" or "all", page) of each task-list read, in order."""
    return [("annotated" if "total_annotations" in path else "all", int(re.search(r"[?&]page=(\d+)", path).group(1)))
            for path in ls.requests("GET", "/api/tasks?")[since:]]


def _queued(connection, settings) -> int:
    return Queue(settings.queue, connection=connection).count


def test_bootstrap_reads_the_prompts_then_the_list_once_and_queues_every_unlabeled_task(stack):
    connection, services, ls = stack
    batch = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64)
    assert PromptPool(connection, PROJECT).size() == 2  # the sync read the annotated tasks...
    assert batch.queued == TASKS - 2 and batch.skipped == 0  # ...and the choice of what to queue the whole list
    # the annotated tasks on one page, then each page of the list once (it was read twice, once per step, before)
    assert _listings(ls) == [("annotated", 1), ("all", 1), ("all", 2), ("all", 3)]
    # a second run reads them once more and skips what the first one queued (still in the queue: no worker)
    before = len(ls.requests("GET", "/api/tasks?"))
    again = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64)
    assert (again.queued, again.skipped_inflight) == (0, TASKS - 2)
    assert _listings(ls, before) == [("annotated", 1), ("all", 1), ("all", 2), ("all", 3)]


@pytest.mark.parametrize("stack", [(TASKS - 1, TASKS)], indirect=True)  # the annotated tasks are on the list's last page
def test_chunks_are_queued_while_later_pages_of_the_list_are_read(stack):
    connection, services, ls = stack
    settings = services.settings
    queued_at: dict[int, int] = {}  # page of the list -> tasks in the queue when Label Studio was asked for it

    def watch(method: str, path: str) -> None:
        if method == "GET" and path.startswith("/api/tasks?") and "total_annotations" not in path:
            queued_at[int(re.search(r"[?&]page=(\d+)", path).group(1))] = _queued(connection, settings)

    ls.watchers.append(watch)
    batch = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64, chunk_size=10)
    assert batch.queued == TASKS - 2 and PromptPool(connection, PROJECT).size() == 2
    # before, the version waited for the whole list (the prompts were on its last page): nothing was queued until then
    assert queued_at == {1: 0, 2: 10, 3: 20}  # chunks of 10 tasks: pages 1 and 2 were queued as they came
    assert _queued(connection, settings) == 23


def test_a_server_that_ignores_the_filter_gives_the_same_prompts_and_version(stack, tmp_path):
    connection, services, ls = stack
    filtered = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64)
    connection.flushdb()
    ls.filters = False  # every task comes back from the "annotated" listing
    before = len(ls.requests("GET", "/api/tasks?"))
    unfiltered = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64)
    assert PromptPool(connection, PROJECT).size() == 2
    assert unfiltered.model_version == filtered.model_version and unfiltered.queued == TASKS - 2
    # never taken as the whole list: a task's presence there is no proof it is annotated
    assert _listings(ls, before) == [("annotated", 1), ("annotated", 2), ("annotated", 3), ("all", 1), ("all", 2), ("all", 3)]


def test_a_task_annotated_while_the_list_is_read_is_left_for_the_next_sync(stack, caplog):
    connection, services, ls = stack

    def annotate_late(method: str, path: str) -> None:
        if method == "GET" and path.startswith("/api/tasks?") and "total_annotations" not in path and 150 not in ls.annotations:
            ls.add_task(PROJECT, 150, ls.tasks[150]["data"]["image"], brush_annotation(1))

    ls.watchers.append(annotate_late)
    with caplog.at_level(logging.WARNING, logger="backend.bootstrap"):
        batch = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64)
    assert "task 150: annotated after this run read its prompts" in caplog.text
    assert PromptPool(connection, PROJECT).size() == 2  # this run's version is of the pool it read
    assert batch.queued == TASKS - 3  # human work is never predicted over


def test_a_list_that_fails_midway_keeps_what_was_queued_for_status_and_a_rerun(stack):
    connection, services, ls = stack
    # page 3 of the whole list fails (past the retries); the annotated tasks' listing and pages 1 and 2 are served
    ls.script("GET", "/api/tasks", lambda query: (503, {"detail": "down"}) if query.get("page") == ["3"] and "query" not in query else None)
    with pytest.raises(LabelStudioError):
        start_bootstrap(connection, services, PROJECT, sync=True, weights_digest="d" * 64, chunk_size=10)
    saved = load_batch(connection, PROJECT)
    assert saved is not None and saved.queued == 190 and len(saved.job_ids) == 19  # pages 1 and 2, whole chunks
    ls.routes.clear()
    rerun = start_bootstrap(connection, build_services(services.settings), PROJECT, sync=True, weights_digest="d" * 64, chunk_size=10)
    assert (rerun.queued, rerun.skipped_inflight) == (TASKS - 2 - 190, 190)


def test_the_command_says_what_it_queued_before_the_list_failed(stack, tmp_path):
    connection, services, ls = stack
    settings = services.settings
    ls.script("GET", "/api/tasks", lambda query: (503, {"detail": "down"}) if query.get("page") == ["3"] and "query" not in query else None)
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "cli"), "REDIS_URL": settings.redis_url, "LABEL_STUDIO_URL": ls.url,
           "LABEL_STUDIO_API_KEY": settings.label_studio_api_key, "ALLOWED_MEDIA_HOSTS": ",".join(settings.allowed_media_hosts),
           "SEGGPT_WEIGHTS": "random:tiny", "SEGGPT_DEVICE": "cpu", "SEGGPT_LS_DEADLINE": "2"}
    run = subprocess.run([*CLI_COMMAND, "bootstrap", "--project", str(PROJECT), "--chunk-size", "10", "--no-wait"], env=env,
                         capture_output=True, text=True, timeout=120, preexec_fn=exec_child_preexec())
    assert run.returncode == 3 and "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[-2].startswith("error: Label Studio gave no usable answer: GET ") and "page=3" in lines[-2], lines
    assert lines[-1] == f"190 task(s) were queued before the error and run; bootstrap again queues the rest (seggpt-ls status --project {PROJECT})"
    assert _queued(connection, settings) == 19


def test_a_running_chunk_shows_its_progress_before_it_ends(stack, tmp_path):
    """The forwards never wait for Redis: the chunk's watcher thread saves its progress (once a second) while they
    run, so `status` and the progress bar move inside a chunk (here 40 tasks whose writes take 0.3 s each)."""
    connection, services, ls = stack
    settings = services.settings
    ls.script("POST", "/api/predictions", lambda query: time.sleep(0.3))  # then served from the state
    batch = start_bootstrap(connection, services, PROJECT, sync=True, weights_digest=None, chunk_size=40, limit=40)
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "worker"), "REDIS_URL": settings.redis_url, "LABEL_STUDIO_URL": ls.url,
           "LABEL_STUDIO_API_KEY": settings.label_studio_api_key, "ALLOWED_MEDIA_HOSTS": ",".join(settings.allowed_media_hosts),
           "SEGGPT_WEIGHTS": "random:tiny", "SEGGPT_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([*CLI_COMMAND, "worker", "--burst"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              preexec_fn=exec_child_preexec())
    seen: set[int] = set()
    try:
        job = fetch_job(connection, batch.job_ids[0])
        deadline = time.monotonic() + 120
        while worker.poll() is None and time.monotonic() < deadline:
            if job.get_status(refresh=True) == "started":
                seen.add(ChunkProgress.from_meta(job.get_meta()).done)
            time.sleep(0.1)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert job.get_status(refresh=True) == "finished" and len(ls.hits("POST", "/api/predictions")) == 40
    assert any(0 < done < 40 for done in seen), seen  # saved midway, not only at the chunk's start and end
