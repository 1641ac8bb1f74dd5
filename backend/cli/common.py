"""Options and helpers shared by several command groups: model and Redis flags, the connection, local workers.

A flag's default is None ("not given"): each command builds its settings once, from its flags over its environment
over the defaults (`command_settings`, or backend.settings.Settings.from_env), and passes them down.
"""

from __future__ import annotations

import argparse
import atexit
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from worker import EmbeddedRedis, data_dir, get_connection, queue_status
from worker.lifecycle import start_child
from worker.redis_supervisor import RedisSupervisor
from worker.settings import DEFAULT_WEIGHTS, DTYPES, ModelSettings, WorkerSettings, inherited_environment

if TYPE_CHECKING:
    import subprocess

    import redis

# `python -m` rather than the `seggpt-ls` script: the script may not be on PATH (a venv not activated)
CLI_COMMAND = [sys.executable, "-m", "backend.cli"]


def add_model_options(parser: argparse.ArgumentParser, default_weights: str | None = None, prediction: bool = True) -> None:
    """The model flags; with `prediction` also those that shape a prediction, which a worker does not take: they
    travel in each job. `default_weights` wins over SEGGPT_WEIGHTS (the demo's own model); None: it does not."""
    weights_default = default_weights or f"SEGGPT_WEIGHTS, else {DEFAULT_WEIGHTS}"
    parser.add_argument("--weights", default=default_weights, help=f"hub id, directory, .safetensors, original .pth, or random:<variant> (default: {weights_default})")
    parser.add_argument("--device", default=None, help="cuda:0, cpu, ... (default: SEGGPT_DEVICE, else CUDA if available)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="(default: SEGGPT_DTYPE, else auto)")
    parser.add_argument("--batch-rows", "--batch-size", dest="batch_rows", type=int, default=None,
                        help=f"prompt rows per forward (targets x prompts) (default: SEGGPT_BATCH_ROWS, else {ModelSettings.max_batch_rows}; "
                             "--batch-size is its old name)")
    if not prediction:
        return
    parser.add_argument("--embedding-type", default="instance", choices=["instance", "semantic"])
    parser.add_argument("--spatial-ensemble", action="store_true", help="stitch prompts into one canvas instead of the feature ensemble")
    parser.add_argument("--labels-per-forward", type=int, default=0,
                        help="paint at most N labels per forward (0: the model's own limit: 1 for tiny-appearance, trained on one color; none for SegGPT)")
    parser.add_argument("--score", default=None, choices=["crisp", "agreement"],
                        help="crisp: one forward; agreement: also the mirrored image, a score that orders masks by quality (default: SEGGPT_SCORE, else crisp)")


def add_redis_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=None, help="default: REDIS_URL, else the embedded Redis under MODEL_DIR")
    parser.add_argument("--queue", action="append", help="queue name (repeatable; default: seggpt)")


def command_settings(args: argparse.Namespace, **flags: Any) -> WorkerSettings:
    """A command's job-layer settings, built once: its flags (those of `add_model_options` and `add_redis_option`
    it has, and `flags`) over its environment over the defaults."""
    given = {"weights": getattr(args, "weights", None), "device": getattr(args, "device", None), "dtype": getattr(args, "dtype", None),
             "max_batch_rows": getattr(args, "batch_rows", None), "redis_url": getattr(args, "redis_url", None)}
    return WorkerSettings.from_env(**given, **flags)


def connect(settings: WorkerSettings) -> redis.Redis:
    """Redis for a command: its settings' Redis URL, else the embedded one under its data directory, which this
    command starts and owns (it ends with the command) when no process of the installation runs it yet."""
    if not settings.redis_url:
        _own_embedded_redis(settings.data_dir)
    return get_connection(settings.redis_url, settings.data_dir)


_owned_redis: list = []


def _own_embedded_redis(directory: Path) -> None:
    if not _owned_redis:
        # restarts it whenever it dies while this command runs (not where someone shut it down on purpose)
        supervisor = RedisSupervisor(EmbeddedRedis(data_dir(directory) / "redis"), restart_after_shutdown=False).start()
        if supervisor.owned:
            _owned_redis.append(supervisor)
            atexit.register(supervisor.stop, 10)  # after the command's own workers have ended
        else:
            supervisor.stop()  # serve or another process runs it, and looks after it


def release_embedded_redis() -> None:
    """The command is over: the embedded Redis it started stops with it (in-process callers, such as tests calling
    `main`, must not keep a supervisor that would start it again once someone else stops it)."""
    while _owned_redis:
        _owned_redis.pop().stop(10)


def local_workers_if_none(connection: redis.Redis, settings: WorkerSettings, flags: Sequence[str] = (),
                          weights_digest: str | None = None, env: Mapping[str, str] | None = None) -> list[subprocess.Popen]:
    """With the embedded Redis and no live worker (none with `weights_digest`, when given), run one for this
    command (it quits when the queue is empty). It is told this command's data directory, and `env` (the backend
    settings its jobs need), in its environment; its model in its `flags`."""
    live = [w for w in queue_status(connection)["workers"] if w["role"] != "control"]  # a control worker runs no chunk
    if weights_digest is not None:
        live = [w for w in live if w.get("weights_digest") in (None, weights_digest)]
    if settings.redis_url or live:
        return []
    print("no live worker: starting one on this machine for this run")
    child_env = inherited_environment({**(env or {}), "MODEL_DIR": str(settings.data_dir)})
    # ends with this command
    return [start_child([*CLI_COMMAND, "--log-level", "WARNING", "worker", "--burst", *flags], env=child_env)]
