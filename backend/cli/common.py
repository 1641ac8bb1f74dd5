"""Options and helpers shared by several command groups: model and Redis flags, the connection, local workers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import subprocess

    import redis

# `python -m` rather than the `seggpt-ls` script: the script may not be on PATH (a venv not activated)
CLI_COMMAND = [sys.executable, "-m", "backend.cli"]


def add_model_options(parser: argparse.ArgumentParser, default_weights: str, prediction: bool = True) -> None:
    """The model flags; with `prediction` also those that shape a prediction, which a worker does not take: they
    travel in each job."""
    parser.add_argument("--weights", default=default_weights, help="hub id, directory, .safetensors, original .pth, or random:<variant> (default: %(default)s)")
    parser.add_argument("--device", default=os.environ.get("SEGGPT_DEVICE"), help="cuda:0, cpu, ... (default: CUDA if available)")
    parser.add_argument("--dtype", default=os.environ.get("SEGGPT_DTYPE", "auto"), choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--batch-rows", "--batch-size", dest="batch_rows", type=int, default=int(os.environ.get("SEGGPT_BATCH_ROWS", 8)),
                        help="prompt rows per forward (targets x prompts) (default: %(default)s, env SEGGPT_BATCH_ROWS; --batch-size is its old name)")
    if not prediction:
        return
    parser.add_argument("--embedding-type", default="instance", choices=["instance", "semantic"])
    parser.add_argument("--spatial-ensemble", action="store_true", help="stitch prompts into one canvas instead of the feature ensemble")
    parser.add_argument("--labels-per-forward", type=int, default=0,
                        help="paint at most N labels per forward (0: the model's own limit: 1 for tiny-appearance, trained on one color; none for SegGPT)")
    parser.add_argument("--score", default=os.environ.get("SEGGPT_SCORE", "crisp"), choices=["crisp", "agreement"],
                        help="crisp: one forward; agreement: also the mirrored image, a score that orders masks by quality (default: %(default)s)")


def add_redis_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="default: REDIS_URL, else the embedded Redis under MODEL_DIR")
    parser.add_argument("--queue", action="append", help="queue name (repeatable; default: seggpt)")


def connect(args: argparse.Namespace) -> redis.Redis:
    """Redis for a command: `--redis-url`, else the embedded one, which this command starts and owns (it ends
    with the command) when no process of the installation runs it yet."""
    from worker import get_connection

    if not args.redis_url:
        _own_embedded_redis()
    return get_connection(args.redis_url)


_owned_redis: list = []


def _own_embedded_redis() -> None:
    import atexit

    from worker.redis_supervisor import RedisSupervisor

    if not _owned_redis:
        # restarts it whenever it dies while this command runs (not where someone shut it down on purpose)
        supervisor = RedisSupervisor(restart_after_shutdown=False).start()
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


def local_workers_if_none(connection: redis.Redis, args: argparse.Namespace, flags: Sequence[str] = (),
                          weights_digest: str | None = None) -> list[subprocess.Popen]:
    """With the embedded Redis and no live worker (none with `weights_digest`, when given), run one for this
    command (it quits when the queue is empty)."""
    from worker import queue_status
    from worker.lifecycle import start_child

    live = [w for w in queue_status(connection)["workers"] if w["role"] != "control"]  # a control worker runs no chunk
    if weights_digest is not None:
        live = [w for w in live if w.get("weights_digest") in (None, weights_digest)]
    if args.redis_url or live:
        return []
    print("no live worker: starting one on this machine for this run")
    return [start_child([*CLI_COMMAND, "--log-level", "WARNING", "worker", "--burst", *flags])]  # ends with this command
