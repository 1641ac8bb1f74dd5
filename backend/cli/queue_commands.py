"""Commands on the job queue: worker, status, retry-failed."""

from __future__ import annotations

import argparse
import json

from worker import queue_status, retry_failed
from worker.defaults import DEFAULT_QUEUE, HEARTBEAT_INTERVAL, MAINTENANCE_INTERVAL, WEIGHTS_WAIT
from worker.gpu_worker import run_worker
from worker.lifecycle import die_with_parent
from worker.runtime import WorkerRuntime

from worker.settings import WorkerSettings

from ..bootstrap import load_batch
from ..job_context import build_job_context
from ..ls_faults import token_problem
from ..settings import Settings
from .common import add_model_options, add_redis_option, command_settings, connect
from .project import print_batch

# what a model worker reads of the backend's settings: media access, the Label Studio sink, and the control queue it
# must not take
MODEL_WORKER_SETTINGS = ("label_studio_url", "label_studio_api_key", "allowed_media_hosts", "media_max_bytes", "media_timeout",
                         "ls_deadline", "max_pixels", "control_queue", "model_dir")


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    """A worker's settings, in one place: its flags over its environment (SEGGPT_PROMPT_CACHE_MB and the rest) over
    the defaults, so that every documented variable reaches the worker."""
    return command_settings(args, low_memory=args.low_memory, weights_wait=args.weights_wait)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = worker_settings(args)  # built once, here
    die_with_parent(settings.parent_pid)  # a worker that `serve` or another command started ends with it
    timing = {"burst": args.burst, "heartbeat_interval": args.heartbeat_interval, "maintenance_interval": args.maintenance_interval}
    if args.control:
        # the backend's own jobs, with the backend's whole configuration; no model, no torch (no runtime)
        backend_settings = Settings.from_env(redis_url=args.redis_url)
        context = build_job_context(connect(settings), backend_settings)
        run_worker(context, args.queue or [backend_settings.control_queue], **timing)
        return 0
    # a model worker needs only media access and the Label Studio sink of the backend's settings: a bad value of
    # another setting does not stop it
    backend_settings = Settings.from_env(only=MODEL_WORKER_SETTINGS)
    queues = args.queue or settings.queues  # interactive work first
    if backend_settings.control_queue in queues:
        raise SystemExit(f"error: {backend_settings.control_queue} is the control queue: a model worker never takes it "
                         "(run `seggpt-ls worker --control` for it)")
    context = build_job_context(connect(settings), backend_settings, WorkerRuntime(settings.model))
    run_worker(context, queues, weights_wait=settings.weights_wait, **timing)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    connection = connect(command_settings(args))
    problem = token_problem(connection)
    if args.project is not None:
        if problem:
            print(f"problem: {problem}")
        batch = load_batch(connection, args.project)
        if batch is None:
            print(f"project {args.project}: no bootstrap has run")
            return 0
        return print_batch(connection, batch)
    status = queue_status(connection, args.queue)
    if args.json:
        print(json.dumps({**status, "problems": [problem] if problem else []}, indent=2))
        return 0
    if problem:
        print(f"problem: {problem}")
    for name, counts in status["queues"].items():
        print(f"queue {name}: {counts['queued']} queued, {counts['running']} running, {counts['failed']} failed")
    for job in status["running"]:
        print(f"  running {job['id']} ({job['description']}): {job['done']}/{job['total']} done, {job['failed']} failed")
    for job in status["failed"]:
        print(f"  failed  {job['id']}: {job['done']}/{job['total']} done; {job.get('reason', '')}")
    counters = status["tasks"]
    print(f"tasks: {counters.get('tasks_done', 0)} done, {counters.get('tasks_failed_input', 0)} failed because of their "
          f"image (final), {counters.get('tasks_failed_system', 0)} failed because of the system (retried by the next run)")
    print(f"workers: {len(status['workers'])}")
    digests = {worker["weights_digest"] for worker in status["workers"] if worker["role"] != "control"}
    for worker in status["workers"]:
        if worker["role"] == "control":
            print(f"  {worker['name']} on {worker['host']}: {worker['state']}, control worker (no model), queues {','.join(worker['queues'])}")
            continue
        print(f"  {worker['name']} on {worker['host']}: {worker['state']}, device {worker['device']}, weights {worker['weights']} "
              f"(digest {worker['weights_digest']}), queues {','.join(worker['queues'])}")
    if len(digests) > 1:
        print(f"warning: the workers hold {len(digests)} different weights ({', '.join(sorted(map(str, digests)))}): each runs "
              "only the jobs queued for its own")
    return 0


def cmd_retry_failed(args: argparse.Namespace) -> int:
    total = 0
    connection = connect(command_settings(args))
    for name in args.queue or [DEFAULT_QUEUE]:
        ids = retry_failed(connection, name)
        total += len(ids)
        for job_id in ids:
            print(f"re-queued {job_id} on {name}")
    print(f"re-queued {total} failed job(s)")
    return 0


def add_worker(commands: argparse._SubParsersAction) -> None:
    worker = commands.add_parser("worker", help="run a worker: load the model once, then process queued jobs")
    add_redis_option(worker)
    add_model_options(worker, prediction=False)
    worker.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    worker.add_argument("--control", action="store_true",
                        help="a control worker: the backend's own jobs (pool syncs, webhook work, relabel and bootstrap planning), "
                             "on the control queue (SEGGPT_CONTROL_QUEUE), without the model; `serve` runs one")
    worker.add_argument("--low-memory", action="store_true", default=None,
                        help="smaller activation blocks, freed memory given back to the OS at once: a lower peak on CPU workers, slower forwards (default: SEGGPT_LOW_MEMORY, else off)")
    worker.add_argument("--heartbeat-interval", type=int, default=HEARTBEAT_INTERVAL, help="seconds between heartbeats (default: %(default)s)")
    worker.add_argument("--maintenance-interval", type=int, default=MAINTENANCE_INTERVAL, help="seconds between sweeps for abandoned jobs (default: %(default)s)")
    worker.add_argument("--weights-wait", type=float, default=None,
                        help=f"seconds a job for other weights waits for a matching worker before its tasks fail (default: SEGGPT_WEIGHTS_WAIT, else {WEIGHTS_WAIT:g})")
    worker.set_defaults(handler=cmd_worker)


def add_status(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="queues, running and failed jobs, live workers")
    add_redis_option(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--project", type=int, help="show the progress of the project's latest bootstrap")
    status.set_defaults(handler=cmd_status)


def add_retry_failed(commands: argparse._SubParsersAction) -> None:
    retry = commands.add_parser("retry-failed", help="re-queue failed jobs (tasks already done are skipped)")
    add_redis_option(retry)
    retry.set_defaults(handler=cmd_retry_failed)
