"""Commands on a Label Studio project: bootstrap (pre-label it) and train-prompt (prompt tuning)."""

from __future__ import annotations

import argparse
import signal
import sys
import time

import redis
from tqdm import tqdm

from ..bootstrap import BootstrapBatch, BootstrapError, batch_failures, batch_progress, load_batch, project_controls, start_bootstrap
from ..ls_client import LabelStudioAuthError, LabelStudioError
from ..ls_faults import report_token_rejected
from ..predict_service import model_version
from ..prompt_pool import PromptPool, sync_from_label_studio
from ..prompt_training import TuningProgress, enqueue_prompt_tuning
from ..services import build_services
from ..settings import Settings
from ..weights_identity import WeightsUnknown, backend_digest
from .common import add_redis_option, command_settings, connect, local_workers_if_none
from worker import cancel_run, fetch_job, get_queue, queue_status
from worker.liveness import prune_dead_workers, requeue_abandoned, requeue_lost
from worker.waiting import ProgressTracker, jobs_ended, status_ended, wait_for_jobs, wait_until


def print_batch(connection: redis.Redis, batch: BootstrapBatch) -> int:
    """A bootstrap's state, counts and failed tasks; 1 when any task failed."""
    progress = batch_progress(connection, batch)
    failures = batch_failures(connection, batch)
    cancelled = progress.get("cancelled", 0)
    state = ("cancelled" if cancelled else "finished") if jobs_ended(progress) else "running"
    print(f"project {batch.project}, run {batch.namespace}, model version {batch.model_version}: {state}")
    print(f"  done {progress['done']}, failed {len(failures)}, cancelled {cancelled}, queued {batch.queued}, "
          f"skipped {batch.skipped} (already predicted {batch.skipped_predicted}, in flight {batch.skipped_inflight}, "
          f"no image {batch.skipped_no_image})")
    by_reason: dict[str, list[str]] = {}
    for task_id, reason in sorted(failures.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0):
        by_reason.setdefault(reason, []).append(task_id)
    for reason, ids in by_reason.items():  # a fault of the system fails many tasks alike: one line for them all
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        print(f"  task {shown}: {reason}" if len(ids) == 1 else f"  {len(ids)} tasks ({shown}): {reason}")
    return 1 if failures else 0


def _supervise(connection: redis.Redis, settings: Settings, workers: list, queues: list[str], pending: list[str]) -> None:
    """Keep the run served: dead workers leave the registry, chunks they held go back to their queue, and when no
    live worker is left while chunks are queued, a local one starts (embedded Redis only; with REDIS_URL, the
    operator's workers serve it)."""
    requeue_lost(connection, pending)  # a chunk whose worker died as it took it, held by no queue
    if any(process.poll() is None for process in workers):
        return
    requeue_abandoned(connection, queues)
    if sum(get_queue(connection, name).count for name in queues):
        workers.extend(_local_workers(connection, settings))


def _wait_with_progress(connection: redis.Redis, batch: BootstrapBatch, settings: Settings, workers: list, queues: list[str]) -> None:
    tracker = ProgressTracker(connection, batch.all_job_ids)
    total = batch.queued + batch.skipped_inflight
    with tqdm(total=total, unit="task", desc="pre-labeling", dynamic_ncols=True) as bar:
        checked = time.monotonic()
        while True:
            # once a second, reading only the chunks not yet ended: the bar costs the machine next to nothing
            progress = tracker.poll()
            bar.update(min(total, progress["done"] + progress["failed"]) - bar.n)
            bar.set_postfix(done=progress["done"], failed=progress["failed"])
            if jobs_ended(progress):
                return
            if time.monotonic() - checked >= 5:
                checked = time.monotonic()
                try:
                    _supervise(connection, settings, workers, queues, tracker.pending)
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # Redis is restarting: the tracker said so once, and the next turn looks again
            time.sleep(1.0)


def _local_workers(connection: redis.Redis, settings: Settings) -> list:
    """A local worker where none lives (embedded Redis only), given this command's settings (its Label Studio
    flags included) in its environment."""
    return local_workers_if_none(connection, settings.worker_settings(), env=settings.child_environment())


def _announce_workers(connection: redis.Redis, settings: Settings) -> list:
    """Start a local worker if no live one serves the run, or name the live ones that will."""
    live = [w for w in queue_status(connection)["workers"] if w["role"] != "control"]  # dead ones pruned first
    if live:
        names = ", ".join(w["name"] for w in live[:3]) + (f" and {len(live) - 3} more" if len(live) > 3 else "")
        print(f"live worker(s) {names} will take the queued chunks")
        return []
    if settings.redis_url:
        print("warning: no live worker on this Redis: the run waits until one starts (seggpt-ls worker --redis-url ...)")
        return []
    return _local_workers(connection, settings)


class _Terminated(KeyboardInterrupt):
    """SIGTERM to this command alone: handled as Ctrl-C, and passed on to its workers (a terminal's Ctrl-C reaches
    them itself), so that they hand their chunks back before the embedded Redis stops, last."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def cmd_bootstrap(args: argparse.Namespace) -> int:
    settings = Settings.from_env(label_studio_url=args.label_studio_url, label_studio_api_key=args.api_key, redis_url=args.redis_url)
    services = build_services(settings)
    connection = connect(settings.worker_settings())
    asked = time.time()
    try:
        batch = start_bootstrap(connection, services, args.project, only=args.only, limit=args.limit, chunk_size=args.chunk_size)
    except BootstrapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LabelStudioError as exc:
        if isinstance(exc, LabelStudioAuthError):
            report_token_rejected(connection, exc)  # `status` and /health say it too
        print(f"error: {exc}", file=sys.stderr)
        partial = load_batch(connection, args.project)
        if partial is not None and partial.started_at >= asked and partial.job_ids:  # this run's, saved as it failed
            print(f"{partial.queued} task(s) were queued before the error and run; bootstrap again queues the rest "
                  f"(seggpt-ls status --project {args.project})", file=sys.stderr)
        return 3
    print(f"model version {batch.model_version}: queued {batch.queued} task(s) in {len(batch.job_ids)} job(s), "
          f"skipped {batch.skipped} (already predicted {batch.skipped_predicted}, in flight {batch.skipped_inflight})")
    if batch.resumed_job_ids:
        print(f"resuming: {batch.skipped_inflight} task(s) in {len(batch.resumed_job_ids)} job(s) left in the queue by an earlier run")
    if args.no_wait:
        print(f"follow it with: seggpt-ls status --project {args.project}")
        return 0
    queues = [settings.interactive_queue, settings.queue]
    workers: list = []
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if batch.all_job_ids:
            prune_dead_workers(connection)
            requeue_abandoned(connection, queues)  # chunks of a worker that died mid-run: back to the queue
            workers.extend(_announce_workers(connection, settings))
            _wait_with_progress(connection, batch, settings, workers, queues)
    except KeyboardInterrupt as exc:
        if isinstance(exc, _Terminated):
            for process in workers:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)  # a warm stop: the running chunk goes back to its queue
        print(f"\ninterrupted: what is written stays; run bootstrap again to resume (seggpt-ls status --project {args.project})",
              file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        for process in workers:
            process.wait()
    return print_batch(connection, batch)


def _follow_tuning(job) -> None:
    with tqdm(total=None, unit="step", desc="prompt tuning", dynamic_ncols=True) as bar:
        def poll() -> str:
            job.refresh()
            tuning = TuningProgress.from_meta(job.get_meta())
            if tuning.total and bar.total != tuning.total:
                bar.total = tuning.total
            bar.update(tuning.done - bar.n)
            if tuning.loss is not None:
                bar.set_postfix(loss=tuning.loss)
            return job.get_status()

        wait_until(poll, status_ended)


def _version(settings, pool_version: str, connection) -> str:
    """The model version these prompts give, or why it cannot be told here (the weights are elsewhere)."""
    try:
        return model_version(settings, pool_version, backend_digest(settings, connection))
    except WeightsUnknown as exc:
        return f"(unknown here: {exc})"


def cmd_cancel(args: argparse.Namespace) -> int:
    connection = connect(command_settings(args))
    batch = load_batch(connection, args.project)
    if batch is None:
        print(f"error: project {args.project}: no bootstrap has run", file=sys.stderr)
        return 2
    if args.run and args.run != batch.namespace:
        print(f"error: run {args.run} is not project {args.project}'s latest bootstrap ({batch.namespace})", file=sys.stderr)
        return 2
    outcome = cancel_run(connection, batch.namespace, batch.job_ids)
    print(f"project {args.project}, run {batch.namespace}: {outcome['dequeued']} queued job(s) removed, "
          f"{outcome['running']} running job(s) told to stop at their next batch")
    progress = wait_for_jobs(connection, batch.job_ids, interval=0.3, timeout=args.timeout)
    if not jobs_ended(progress):
        print(f"warning: some jobs still run after {args.timeout:.0f} s; see seggpt-ls status --project {args.project}")
    print(f"done {progress['done']}, cancelled {progress.get('cancelled', 0)}, failed {progress['failed']} of {batch.queued} "
          "queued task(s); what was done stays written. Run bootstrap again to resume.")
    return 0


def add_cancel(commands: argparse._SubParsersAction) -> None:
    cancel = commands.add_parser("cancel", help="stop a project's running bootstrap (what is written stays; bootstrap resumes)")
    add_redis_option(cancel)
    cancel.add_argument("--project", type=int, required=True)
    cancel.add_argument("--run", default=None, help="the run id (default: the project's latest bootstrap; see status --project)")
    cancel.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for running chunks to stop (default: %(default)s)")
    cancel.set_defaults(handler=cmd_cancel)


def cmd_train_prompt(args: argparse.Namespace) -> int:
    settings = Settings.from_env(label_studio_url=args.label_studio_url, label_studio_api_key=args.api_key, tune_steps=args.steps,
                                 redis_url=args.redis_url)
    connection = connect(settings.worker_settings())
    pool = PromptPool(connection, args.project)
    if args.clear:
        pool.clear_learned_prompts()
        print(f"project {args.project}: learned prompts dropped; model version {_version(settings, pool.version(), connection)} "
              "predicts from the annotations again")
        return 0
    services = build_services(settings)
    controls = project_controls(services, pool)  # the job reads the saved config
    # the prompts as Label Studio has them now, read here: the model worker that tunes needs no Label Studio
    sync_from_label_studio(pool, services.require_client(), services.fetcher.fetch, controls, settings.max_pixels)
    job = fetch_job(connection, enqueue_prompt_tuning(connection, settings, args.project)[0])
    print(f"queued prompt tuning of project {args.project} ({settings.tune_steps} steps per image field) as job {job.id}")
    if args.no_wait:
        print("follow it with: seggpt-ls status")
        return 0
    workers = _local_workers(connection, settings)  # told the Label Studio flags through its environment
    try:
        _follow_tuning(job)
    finally:
        for process in workers:
            process.wait()
    if job.get_status() != "finished":
        result = job.latest_result()
        reason = (result.exc_string or "").strip().splitlines()[-1:] if result is not None else []
        print(f"error: prompt tuning {job.get_status()}: {reason[0] if reason else 'see the worker log'}", file=sys.stderr)
        return 1
    outcome = job.return_value()
    for data_key, field in outcome["fields"].items():
        print(f"${data_key}: {field['examples']} labeled task(s), labels {', '.join(field['labels'])}, "
              f"final loss {field['final_loss']}, saved to {field['path']}")
    print(f"model version {_version(settings, outcome['pool_version'], connection)}: /predict and bootstrap use the tuned prompt from now on")
    return 0


def _add_label_studio_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--label-studio-url", default=None, help="default: LABEL_STUDIO_URL")
    parser.add_argument("--api-key", default=None, help="default: LABEL_STUDIO_API_KEY (legacy token or personal access token)")


def add_bootstrap(commands: argparse._SubParsersAction) -> None:
    bootstrap = commands.add_parser("bootstrap", help="pre-label a whole project through the queue (resumable)")
    add_redis_option(bootstrap)
    _add_label_studio_options(bootstrap)
    bootstrap.add_argument("--only", choices=["unlabeled", "all"], default="unlabeled")
    bootstrap.add_argument("--limit", type=int, default=None, help="at most N tasks")
    bootstrap.add_argument("--chunk-size", type=int, default=None, help="tasks per job (default: SEGGPT_BULK_CHUNK_SIZE, 64)")
    bootstrap.add_argument("--no-wait", action="store_true", help="queue and return; see progress with status --project")
    bootstrap.set_defaults(handler=cmd_bootstrap)


def add_train_prompt(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser("train-prompt", help="learn a prompt for a project's labels from its labeled tasks (prompt tuning, as a job)")
    add_redis_option(tune)
    _add_label_studio_options(tune)
    tune.add_argument("--steps", type=int, default=None, help="optimisation steps per image field (default: SEGGPT_TUNE_STEPS)")
    tune.add_argument("--no-wait", action="store_true", help="queue and return; see progress with status")
    tune.add_argument("--clear", action="store_true", help="drop the project's learned prompts: predict from the annotations again")
    tune.set_defaults(handler=cmd_train_prompt)
