"""Commands on the job queue: worker, status, retry-failed."""

from __future__ import annotations

import argparse
import dataclasses
import os

from .common import add_model_options, add_redis_option, connect
from .project import print_batch


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.gpu_worker import run_worker
    from worker.lifecycle import die_with_parent
    from worker.runtime import ModelSettings, WorkerRuntime

    from ..job_context import build_job_context
    from ..settings import Settings

    die_with_parent()  # a worker that `serve` or another command started ends with it
    backend_settings = Settings.from_env()
    queues = args.queue or ([backend_settings.control_queue] if args.control
                            else [backend_settings.interactive_queue, backend_settings.queue])  # interactive work first
    if not args.control and backend_settings.control_queue in queues:
        raise SystemExit(f"error: {backend_settings.control_queue} is the control queue: a model worker never takes it "
                         "(run `seggpt-ls worker --control` for it)")
    connection = connect(args)
    timing = {"burst": args.burst, "heartbeat_interval": args.heartbeat_interval, "maintenance_interval": args.maintenance_interval}
    if args.control:
        # the backend's own jobs: no model, no torch (the context has no runtime)
        context = build_job_context(connection, backend_settings)
        run_worker(context, queues, **timing)
        return 0

    # the environment's settings (SEGGPT_PROMPT_CACHE_MB and the rest), then the flags, whose defaults are the same
    # variables: every documented variable reaches the worker
    settings = dataclasses.replace(
        ModelSettings.from_env(),
        weights=args.weights,
        device=args.device or None,
        dtype=None if args.dtype == "auto" else args.dtype,
        max_batch_rows=args.batch_rows,
        low_memory=args.low_memory,
        max_pixels=backend_settings.max_pixels,  # SEGGPT_MAX_PIXELS
    )
    context = build_job_context(connection, backend_settings, WorkerRuntime(settings))
    run_worker(context, queues, weights_wait=args.weights_wait, **timing)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from worker import queue_status

    from ..ls_faults import token_problem

    connection = connect(args)
    problem = token_problem(connection)
    if args.project is not None:
        from ..bootstrap import load_batch

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
    from worker import retry_failed
    from worker.defaults import DEFAULT_QUEUE

    total = 0
    for name in args.queue or [DEFAULT_QUEUE]:
        ids = retry_failed(connect(args), name)
        total += len(ids)
        for job_id in ids:
            print(f"re-queued {job_id} on {name}")
    print(f"re-queued {total} failed job(s)")
    return 0


def add_worker(commands: argparse._SubParsersAction) -> None:
    from worker.defaults import HEARTBEAT_INTERVAL, MAINTENANCE_INTERVAL, WEIGHTS_WAIT
    from worker.runtime import ModelSettings

    worker = commands.add_parser("worker", help="run a worker: load the model once, then process queued jobs")
    add_redis_option(worker)
    add_model_options(worker, os.environ.get("SEGGPT_WEIGHTS", "BAAI/seggpt-vit-large"), prediction=False)
    worker.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    worker.add_argument("--control", action="store_true",
                        help="a control worker: the backend's own jobs (pool syncs, webhook work, relabel and bootstrap planning), "
                             "on the control queue (SEGGPT_CONTROL_QUEUE), without the model; `serve` runs one")
    worker.add_argument("--low-memory", action="store_true", default=ModelSettings.from_env().low_memory,
                        help="smaller activation blocks, freed memory given back to the OS at once: a lower peak on CPU workers, slower forwards (env SEGGPT_LOW_MEMORY)")
    worker.add_argument("--heartbeat-interval", type=int, default=HEARTBEAT_INTERVAL, help="seconds between heartbeats (default: %(default)s)")
    worker.add_argument("--maintenance-interval", type=int, default=MAINTENANCE_INTERVAL, help="seconds between sweeps for abandoned jobs (default: %(default)s)")
    worker.add_argument("--weights-wait", type=float, default=float(os.environ.get("SEGGPT_WEIGHTS_WAIT", WEIGHTS_WAIT)),
                        help="seconds a job for other weights waits for a matching worker before its tasks fail (default: %(default)s, env SEGGPT_WEIGHTS_WAIT)")
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
