"""Webhook events as hints, coalesced per project, and the jobs that act on them by re-reading Label Studio.

Label Studio sends webhooks without credentials, so an event only says where to look: the task ids it names are
noted per project, and one job per project and kind reads Label Studio for them. Nothing in a body is trusted on
its own: a task counts as deleted when Label Studio no longer lists it among the project's tasks.
However many events arrive (forged ones, or 500 legitimate repeats), a project has at most one pending job of each
kind: "pool" (re-read the hinted tasks, or the whole project), "prelabel" (predict imported tasks) and "tune"
(prompt tuning). The jobs go to the control queue, where the control worker starts each only once no /predict is
queued or running (`yields_to`): every /predict goes first.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Iterable

import redis
from worker import JobContext, enqueue_call

from .bootstrap import start_bootstrap
from .control_jobs import after_pool_change, reports_token
from .keys import hint_keys
from .label_config import LabelConfigError, parse_label_config
from .ls_client import LabelStudioAuthError, LabelStudioError
from .ls_format import split_label_key
from .prompt_pool import PromptPool, newest_annotation, sync_from_label_studio
from .settings import Settings

__all__ = ["MAX_HINTED_TASKS", "note_hints", "schedule_hint_job", "clear_pending", "apply_pool_hints", "apply_prelabel_hints",
           "POOL_FUNCTION", "PRELABEL_FUNCTION", "take_hints"]

log = logging.getLogger(__name__)

# Beyond this many hinted tasks, one pass over the project's task list costs less, and is bounded by the project's
# real size rather than by what a body claims (a forged event listed 3,000 tasks: 3,000 reads).
MAX_HINTED_TASKS = 200
READ_BATCH = 100  # hinted tasks read per request (Label Studio's default largest page)
PENDING_TTL = 3600  # a lost job never blocks its kind for longer
FULL_SYNC, CONTROLS = "sync", "controls"  # values of the full-pass flag: rebuild the pool; re-read the label config

POOL_FUNCTION = "backend.webhook_hints.apply_pool_hints"
PRELABEL_FUNCTION = "backend.webhook_hints.apply_prelabel_hints"

# compare-and-delete: a job clears the pending flag only while it names this job
_CLEAR_IF_OWNED = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def note_hints(connection: redis.Redis, project: int, kind: str, task_ids: Iterable[int] = (), full: str | None = None) -> None:
    """Remember what an event named, for the next job of `kind`: task ids (bounded: past MAX_HINTED_TASKS they turn
    into one full pass), or a full pass (`FULL_SYNC` outranks `CONTROLS`)."""
    _, tasks_key, full_key = hint_keys(project, kind)
    ids = sorted({int(t) for t in task_ids})
    if len(ids) > MAX_HINTED_TASKS:
        ids, full = [], FULL_SYNC
    if ids:
        with connection.pipeline(transaction=True) as pipe:
            pipe.sadd(tasks_key, *ids)
            pipe.scard(tasks_key)
            _, size = pipe.execute()
        if size > MAX_HINTED_TASKS:
            full = FULL_SYNC
            connection.delete(tasks_key)
    if full == FULL_SYNC:
        connection.set(full_key, FULL_SYNC)
    elif full == CONTROLS:
        connection.set(full_key, CONTROLS, nx=True)  # never downgrades a pending full sync


def schedule_hint_job(connection: redis.Redis, settings: Settings, project: int, kind: str, function: str, payload: dict,
                      description: str) -> tuple[str, bool]:
    """Queue `function` for `project` unless a job of `kind` is already waiting. Returns (the waiting job's id,
    whether this call queued it). A job that has started no longer counts: what arrives after its start queues
    the next one, so nothing noted is missed."""
    pending_key, _, _ = hint_keys(project, kind)
    job_id = f"hint-{kind}-{project}-{uuid.uuid4().hex[:12]}"
    if connection.set(pending_key, job_id, nx=True, ex=PENDING_TTL):
        enqueue_call(connection, function, {**payload, "project": project, "hint_job": job_id}, queue=settings.control_queue,
                     job_id=job_id, description=description, yields_to=[settings.interactive_queue])
        return job_id, True
    waiting = connection.get(pending_key)
    return (waiting.decode() if waiting else job_id), False


def clear_pending(connection: redis.Redis, project: int, kind: str, job_id: str | None) -> None:
    """A starting job lets the next event queue a new one."""
    if job_id:
        connection.eval(_CLEAR_IF_OWNED, 1, hint_keys(project, kind)[0], job_id)


def take_hints(connection: redis.Redis, project: int, kind: str, job_id: str | None) -> tuple[list[int], str | None]:
    clear_pending(connection, project, kind, job_id)  # first: an event from now on queues another job
    _, tasks_key, full_key = hint_keys(project, kind)
    with connection.pipeline(transaction=True) as pipe:
        pipe.smembers(tasks_key)
        pipe.delete(tasks_key)
        pipe.get(full_key)
        pipe.delete(full_key)
        members, _, full, _ = pipe.execute()
    return sorted(int(m) for m in members), (full.decode() if full else None)


def _give_back(connection: redis.Redis, project: int, kind: str, task_ids: list[int], full: str | None) -> None:
    """The job failed (Label Studio down, say): its hints wait for the retry, or for the next event's job."""
    try:
        note_hints(connection, project, kind, task_ids, full)
    except redis.RedisError:
        log.warning("project %s: %s hints lost with Redis; the next pool sync catches up", project, kind)


def _read_tasks(client, project: int, task_ids: list[int]) -> dict[int, dict]:
    """The hinted tasks that are tasks of `project`, with their annotations, from the task list (selected by id).
    Never GET /api/tasks/<id>: for a task without predictions, Label Studio answers that one only after asking this
    backend's /predict, which waits for the worker doing this read. A listing that ends short of its total raises:
    a task missing from it must not count as deleted."""
    found: dict[int, dict] = {}
    for start in range(0, len(task_ids), READ_BATCH):
        batch = task_ids[start:start + READ_BATCH]
        query = json.dumps({"selectedItems": {"all": False, "included": batch}})
        seen = 0
        for page in range(1, len(batch) + 1):  # more pages only where the server's page size is capped below ours
            body = client.get_json("/api/tasks", project=project, fields="all", page=page, page_size=READ_BATCH, query=query)
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            found.update({t["id"]: t for t in tasks if t.get("id") in batch})
            seen += len(tasks)
            total = body.get("total") if isinstance(body, dict) else None
            if total is None or seen >= total:
                break
            if not tasks:
                raise LabelStudioError(f"GET /api/tasks?project={project}: the listing ended at {seen} of {total} tasks")
    return found


def _reread_task(pool: PromptPool, task: dict | None, task_id: int, controls, fetch, max_pixels: int) -> str | list[str]:
    """One hinted task, as Label Studio has it now (None: it is no task of the project, so its prompt goes)."""
    if task is None:
        return "deleted" if pool.remove_task(task_id) else "not a task of the project"
    annotation = newest_annotation(task.get("annotations") or [])
    if annotation is None:
        return "no annotation" + (": prompt removed" if pool.remove_task(task_id) else "")
    try:
        return [split_label_key(label)[1] for label in pool.upsert(task, annotation, controls, fetch, max_pixels)]
    except LabelStudioError as exc:
        if exc.transient or isinstance(exc, LabelStudioAuthError):
            raise  # Label Studio's fault, not the annotation's: every other task would meet it too
        return f"not usable as a prompt: {exc}"
    except Exception as exc:  # one unusable annotation never stops the others
        log.warning("task %s: annotation not usable as a prompt: %s", task_id, exc)
        return f"not usable as a prompt: {type(exc).__name__}: {exc}"


@reports_token
def apply_pool_hints(payload: dict, context: JobContext) -> dict:
    """`{"project": id, "hint_job": job id, "weights_digest": ...}`: re-read the hinted tasks (or, for a full pass,
    the project's label config and every task) from Label Studio and update the pool; one version change at most."""
    project = int(payload["project"])
    task_ids, full = take_hints(context.connection, project, "pool", payload.get("hint_job"))
    if not task_ids and full is None:
        return {"project": project, "nothing": "to do (an earlier job took the hints)"}
    try:
        return _apply_pool_hints(context, payload, project, task_ids, full)
    except Exception:
        _give_back(context.connection, project, "pool", task_ids, full)
        raise


def _apply_pool_hints(context: JobContext, payload: dict, project: int, task_ids: list[int], full: str | None) -> dict:
    services = context.services
    client = services.require_client()
    max_pixels = services.settings.max_pixels
    pool = PromptPool(context.connection, project)
    try:
        config = client.get_json(f"/api/projects/{project}")["label_config"]
    except LabelStudioError as exc:
        if exc.status == 404:
            log.info("project %s: not in Label Studio; webhook hints dropped", project)
            return {"project": project, "gone": True}
        raise
    saved = pool.load_controls()
    try:
        current = parse_label_config(config)
    except LabelConfigError as exc:
        log.warning("project %s: its label config cannot be used (%s); webhook hints dropped", project, exc)
        return {"project": project, "skipped": str(exc)}
    if saved is None:
        pool.save_controls(current, config)
    elif full is not None:  # PROJECT_UPDATED, or a full pass: the label config is re-read too
        if saved[0] != current:
            pool.save_controls(current, config)
            full = FULL_SYNC  # new controls: every prompt is re-read with them (a new version only then)
        elif saved[1] != config:
            pool.save_controls(current, config)  # the same controls, written differently: no new version
    controls = pool.load_controls()[0]
    outcome: dict = {"project": project}
    if full == FULL_SYNC:
        report = sync_from_label_studio(pool, client, services.fetcher.fetch, controls, max_pixels)
        outcome.update({"full": True, "entries": report["entries"], "errors": {str(k): v for k, v in report["errors"].items()}})
    else:
        tasks = _read_tasks(client, project, task_ids)
        outcome["tasks"] = {str(t): _reread_task(pool, tasks.get(t), t, controls, services.fetcher.fetch, max_pixels)
                            for t in task_ids}
    return {**outcome, **after_pool_change(context, pool, payload)}


@reports_token
def apply_prelabel_hints(payload: dict, context: JobContext) -> dict:
    """`{"project": id, "hint_job": ..., "weights_digest": ...}`: predict the imported tasks that were hinted (or,
    past the bound, every unlabeled task); the bootstrap reads the task list from Label Studio, so ids that are not
    the project's tasks are never predicted."""
    connection = context.connection
    project = int(payload["project"])
    task_ids, full = take_hints(connection, project, "prelabel", payload.get("hint_job"))
    if not task_ids and full is None:
        return {"project": project, "nothing": "to do (an earlier job took the hints)"}
    pool = PromptPool(connection, project)
    if pool.size() == 0:
        return {"project": project, "queued": 0, "reason": "no prompts yet"}
    try:
        batch = start_bootstrap(connection, context.services, project, task_ids=None if full else task_ids, sync=False,
                                weights_digest=payload.get("weights_digest"))
    except LabelStudioError as exc:
        if exc.status == 404:
            return {"project": project, "gone": True}
        _give_back(connection, project, "prelabel", task_ids, full)
        raise
    return {"project": project, "queued": batch.queued, "jobs": batch.job_ids, "version": batch.model_version}
