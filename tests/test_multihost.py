"""Workers on other hosts (tests/multihost.py): a head host with Redis, Label Studio, serve and the media server,
worker hosts w1 and w2 running the docs' worker command; a partition, a lost machine and a Redis restart, each in a
bootstrap of 60 tasks, counted through the Label Studio API."""

from __future__ import annotations

import json
import time

import pytest

from seggpt_core.research.shapes import make_scene

from .ls_harness import brush_result
from .multihost import MultiHost, busy_job, our_namespaces
from .queue_helpers import png_bytes

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="img" value="$image"/>
  <BrushLabels name="mask" toName="img"><Label value="Disc"/><Label value="Star"/></BrushLabels>
</View>"""
ANNOTATED = 2
TASKS = 60  # unlabeled, besides the annotated ones
CHUNK = "6"
WEIGHTS = "random:tiny"
STATUS_BOUND = 90  # seconds after a machine's power loss until `seggpt-ls status` no longer lists it


def _scene(index: int):
    return make_scene(2000 + index, size=(96, 120), must_include=("disc", "star"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multihost")
    media = directory / "media"
    media.mkdir()
    for index in range(TASKS + ANNOTATED):
        (media / f"img{index}.png").write_bytes(png_bytes(_scene(index).image))
    hosts = MultiHost(directory / "hosts").start()
    try:
        hosts.start_redis()
        label_studio = hosts.start_label_studio()
        media_host = hosts.start_media(media).replace(hosts.head.address, "media-host")
        env = hosts.head_env(label_studio, media_host, SEGGPT_WEIGHTS=WEIGHTS, SEGGPT_DEVICE="cpu",
                             BASIC_AUTH_USER="ls-backend", BASIC_AUTH_PASS="backend-pass-1")
        hosts.start_serve(env)
        for name in hosts.workers:
            hosts.start_worker(name, label_studio, media_host, WEIGHTS)
        _wait_workers(hosts, {"w1", "w2"})
        yield hosts, label_studio, env, media_host
    finally:
        hosts.stop()
    assert not our_namespaces(), "the harness left network namespaces behind"


def _live_workers(connection) -> list[dict]:
    from worker import queue_status

    return queue_status(connection)["workers"]


def _hosts_of_live_workers(hosts: MultiHost) -> set[str]:
    return hosts.call(lambda: {w["host"] for w in _live_workers(hosts.redis()) if w.get("model_loads")})


def _wait_workers(hosts: MultiHost, names: set[str], timeout: float = 180) -> None:
    hosts.wait(lambda: names <= _hosts_of_live_workers(hosts), timeout, f"workers on {sorted(names)}")


def _busy_job(hosts: MultiHost, host: str) -> str | None:
    return busy_job(hosts, host)


def _owner(hosts: MultiHost, job_id: str) -> bytes | None:
    from worker.keys import chunk_owner_key

    return hosts.call(lambda: hosts.redis().get(chunk_owner_key(job_id)))


def _job_meta(hosts: MultiHost, job_id: str) -> tuple[str, dict]:
    from worker import fetch_job

    def read():
        job = fetch_job(hosts.redis(), job_id)
        return job.get_status(), job.get_meta()

    return hosts.call(read)


def _registry_state(hosts: MultiHost, job_id: str) -> dict:
    """What RQ holds about a job, for a failure's message."""
    from rq.registry import StartedJobRegistry

    from worker import fetch_job, get_queue

    def read():
        connection = hosts.redis()
        job = fetch_job(connection, job_id)
        registry = StartedJobRegistry(queue=get_queue(connection, job.origin))
        return {"status": job.get_status(), "retries_left": job.retries_left, "now": time.time(),
                "started": connection.zrange(registry.key, 0, -1, withscores=True)}

    return hosts.call(read)


def _project(label_studio, media_host: str, title: str) -> tuple[int, set[int]]:
    project = label_studio.create_project(title, CONFIG)
    label_studio.import_tasks(project, [{"image": f"http://{media_host}/img{i}.png"} for i in range(TASKS + ANNOTATED)])
    tasks = label_studio.tasks(project)
    for index, task in enumerate(tasks[:ANNOTATED]):
        scene = _scene(index)
        label_studio.annotate(task["id"], [brush_result(scene.masks["disc"], "Disc", f"d{index}", "mask", "img"),
                                           brush_result(scene.masks["star"], "Star", f"s{index}", "mask", "img")])
    return project, {t["id"] for t in tasks[ANNOTATED:]}


def _predictions_per_task(label_studio, project: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for prediction in label_studio.api("GET", "/api/predictions/", params={"project": project}).json():
        counts[prediction["task"]] = counts.get(prediction["task"], 0) + 1
    return counts


def _bootstrap(hosts: MultiHost, env: dict, project: int, log: str):
    return hosts.start_cli(env, "bootstrap", "--project", str(project), "--chunk-size", CHUNK, log=log)


def _finish(hosts: MultiHost, cli, log: str, label_studio, project: int, unlabeled: set[int], timeout: float = 300) -> str:
    cli.wait(timeout)
    output = (hosts.head.directory / log).read_text(errors="replace")
    assert cli.returncode == 0, output[-3000:]
    assert f"done {TASKS}, failed 0" in output, output[-3000:]
    time.sleep(3)  # anything a late (zombie) write would add has had time to arrive
    counts = _predictions_per_task(label_studio, project)
    assert set(counts) == unlabeled, f"missing {sorted(unlabeled - set(counts))}, extra {sorted(set(counts) - unlabeled)}"
    assert {t: c for t, c in counts.items() if c != 1} == {}, "tasks with more than one prediction"
    return output


def _wait_busy(hosts: MultiHost, host: str, timeout: float = 120) -> str:
    """A chunk a worker of `host` runs now: one it has claimed and RQ marks started, not one only dequeued. A machine
    lost before RQ marks it started leaves it in RQ's intermediate queue, which RQ's sweep recovers only after a
    minute or two (docs/deployment.md)."""
    def running() -> str | None:
        job = _busy_job(hosts, host)
        return job if job and _owner(hosts, job) and _job_meta(hosts, job)[0] == "started" else None

    return hosts.wait(running, timeout, f"a worker on {host} to run a chunk", interval=0.05)


def test_a_partition_heals_without_loss(cluster):
    """w1's link is cut while it runs a chunk: the chunk is re-queued and finished by w2; w1, back on the network,
    writes nothing for the chunk it no longer holds; every task ends with exactly one prediction."""
    hosts, label_studio, env, media_host = cluster
    project, unlabeled = _project(label_studio, media_host, "partition")
    cli = _bootstrap(hosts, env, project, "bootstrap-partition.log")
    job = _wait_busy(hosts, "w1")
    first_owner = _owner(hosts, job)
    hosts.cut("w1")
    cut_at = time.monotonic()
    try:
        try:
            hosts.wait(lambda: _owner(hosts, job) not in (None, first_owner), 120, "w1's chunk to be taken over", interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {_registry_state(hosts, job)}") from None
        requeued_after = time.monotonic() - cut_at
        time.sleep(2)
    finally:
        hosts.heal("w1")
    healed_after = time.monotonic() - cut_at
    _finish(hosts, cli, "bootstrap-partition.log", label_studio, project, unlabeled)
    status, meta = _job_meta(hosts, job)
    assert status == "finished" and meta["done"] == meta["total"], (status, meta)
    assert meta["worker"]["pid"] in hosts.workers["w2"].pids(), meta["worker"]  # finished by w2
    refused = (hosts.workers["w1"].directory / "worker.log").read_text(errors="replace").count("no longer this worker's")
    print(f"partition: taken over {requeued_after:.1f} s after the cut, healed after {healed_after:.1f} s; w1 refused {refused} write(s)")


def test_a_lost_machine_is_replaced_and_leaves_the_status(cluster):
    """Every process of w2 is SIGKILLed mid-bootstrap (a power loss): w1 redoes its chunk, nothing lost or written
    twice, and `seggpt-ls status` stops listing w2 within STATUS_BOUND seconds."""
    hosts, label_studio, env, media_host = cluster
    _wait_workers(hosts, {"w1", "w2"})
    project, unlabeled = _project(label_studio, media_host, "lost machine")
    cli = _bootstrap(hosts, env, project, "bootstrap-lost.log")
    _wait_busy(hosts, "w2")
    killed = hosts.workers["w2"].power_off()
    lost_at = time.monotonic()
    assert killed and not hosts.workers["w2"].pids()
    hosts.wait(lambda: "w2" not in _hosts_of_live_workers(hosts), STATUS_BOUND, "status to stop listing w2", interval=1)
    gone_after = time.monotonic() - lost_at
    status = hosts.cli(env, "status", timeout=120)
    assert status.returncode == 0 and " on w1:" in status.stdout and " on w2:" not in status.stdout, status.stdout + status.stderr
    _finish(hosts, cli, "bootstrap-lost.log", label_studio, project, unlabeled)
    print(f"lost machine: status stopped listing w2 {gone_after:.1f} s after the power loss")
    hosts.start_worker("w2", label_studio, media_host, WEIGHTS)  # the machine is back, for the next test
    _wait_workers(hosts, {"w1", "w2"})


def test_redis_restarts_under_two_worker_hosts(cluster):
    """Redis on the head stops mid-bootstrap and starts again from its append-only file: both worker hosts resume
    and run chunks again, the run completes, one prediction per task."""
    hosts, label_studio, env, media_host = cluster
    _wait_workers(hosts, {"w1", "w2"})
    project, unlabeled = _project(label_studio, media_host, "redis restart")
    cli = _bootstrap(hosts, env, project, "bootstrap-redis.log")
    hosts.wait(lambda: len(_predictions_per_task(label_studio, project)) >= 6, 180, "the first predictions")
    hosts.stop_redis()
    time.sleep(5)
    restarted = time.monotonic()
    hosts.start_redis()
    jobs_after: dict[str, set[str]] = {"w1": set(), "w2": set()}

    def both_resumed() -> bool:
        for name in jobs_after:
            job = _busy_job(hosts, name)
            if job:
                jobs_after[name].add(job)
        return all(jobs_after.values()) or cli.poll() is not None

    hosts.wait(both_resumed, 180, "both worker hosts to run chunks again", interval=0.1)
    _finish(hosts, cli, "bootstrap-redis.log", label_studio, project, unlabeled)
    assert all(jobs_after.values()), f"chunks run after the restart, by host: {jobs_after}"
    print(f"redis restart: both hosts ran chunks within {time.monotonic() - restarted:.1f} s of the restart")
