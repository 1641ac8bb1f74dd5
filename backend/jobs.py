"""Backend job functions that run in worker processes (enqueued by import path through the job layer)."""

from __future__ import annotations

import functools
import logging

from rq import get_current_job

from worker import SystemFault

from .label_config import parse_label_config
from .bootstrap import start_bootstrap
from .keys import current_version_key, pool_sync_due_key, pool_sync_failed_key
from .ls_client import LabelStudioAuthError, LabelStudioError
from .ls_faults import note_label_studio_ok, report_token_rejected
from .predict_service import current_model_version
from .prompt_pool import PromptPool, newest_annotation, sync_from_label_studio
from .services import services_from_env
from .weights_identity import backend_digest

__all__ = ["sync_pool", "update_pool_for_task", "update_pool_for_tasks", "remove_pool_annotations", "remove_pool_tasks",
           "refresh_controls", "prelabel_tasks"]

log = logging.getLogger(__name__)


def reports_token(function):
    """A job that calls Label Studio: a rejected token is reported (for /health and status, logged once a minute)
    before the job fails with its one line."""
    @functools.wraps(function)
    def job(payload: dict) -> dict:
        try:
            return function(payload)
        except LabelStudioAuthError as exc:
            report_token_rejected(get_current_job().connection, exc)
            raise

    return job


def pool_and_controls(payload: dict):
    job = get_current_job()
    pool = PromptPool(job.connection, payload["project"])
    saved = pool.load_controls()
    if saved is None:
        controls = parse_label_config(payload["label_config"])
        pool.save_controls(controls, payload["label_config"])
    else:
        controls = saved[0]
    return job, pool, controls


def sync_pool(payload: dict) -> dict:
    """Rebuild a project's prompt pool from Label Studio: `{"project": id, "label_config": "<View>..."}`."""
    job, pool, controls = pool_and_controls(payload)
    services = services_from_env()
    try:
        report = sync_from_label_studio(pool, services.require_client(), services.fetcher.fetch, controls)
    except LabelStudioError as exc:
        return sync_failed(job.connection, pool.project, exc)
    job.connection.delete(pool_sync_failed_key(pool.project))
    note_label_studio_ok(job.connection)
    job.meta.update({"entries": report["entries"], "errors": report["errors"]})
    job.save_meta()
    return {"entries": report["entries"], "errors": {str(k): v for k, v in report["errors"].items()}, "version": pool.version()}


SYNC_RETRY_AFTER = 15  # seconds: after a failed sync, the next /setup may start another this soon (not SYNC_EVERY)


def sync_failed(connection, project: int, error: LabelStudioError) -> dict:
    """A sync that Label Studio made fail: the pool stays as it was, /predict says why it has no prompts, the next
    /setup after SYNC_RETRY_AFTER seconds tries again, and the job ends (RQ's immediate retries would only meet
    the same fault)."""
    with connection.pipeline() as pipe:
        pipe.set(pool_sync_failed_key(project), str(error), ex=86400)
        pipe.set(pool_sync_due_key(project), 1, ex=SYNC_RETRY_AFTER)
        pipe.execute()
    if isinstance(error, LabelStudioAuthError):
        report_token_rejected(connection, error)
    else:
        log.warning("project %s: prompt-pool sync failed, retried in %d s at the earliest: %s", project, SYNC_RETRY_AFTER, error)
    return {"error": str(error)}


@reports_token
def update_pool_for_task(payload: dict) -> dict:
    """Re-read one task's annotations from Label Studio (webhook bodies are only hints) and update the pool."""
    job, pool, controls = pool_and_controls(payload)
    services = services_from_env()
    client = services.require_client()
    task = client.task(payload["task"])
    annotation = newest_annotation(client.annotations(payload["task"]))
    if annotation is None:
        removed = pool.remove_task(task["id"])
        return {"task": task["id"], "removed": removed, **_after_pool_change(job, pool, services, payload)}
    labels = pool.upsert(task, annotation, controls, services.fetcher.fetch)
    return {"task": task["id"], "labels": [l.split("\x1f", 1)[1] for l in labels], **_after_pool_change(job, pool, services, payload)}


@reports_token
def update_pool_for_tasks(payload: dict) -> dict:
    """Many tasks got annotations at once (ANNOTATIONS_CREATED): re-read each, then one version change."""
    job, pool, controls = pool_and_controls(payload)
    outcome = {}
    for task_id in payload["tasks"]:
        try:
            outcome[str(task_id)] = update_pool_for_task({**payload, "task": task_id, "relabel": False}).get("labels", [])
        except SystemFault:
            raise  # Label Studio's fault, not the annotation's: every other task would meet it too
        except Exception as exc:  # one unusable annotation never stops the others
            outcome[str(task_id)] = f"{type(exc).__name__}: {exc}"
            log.warning("task %s: annotation not usable as a prompt: %s", task_id, exc)
    return {"tasks": outcome, **_after_pool_change(job, pool, services_from_env(), payload)}


def remove_pool_tasks(payload: dict) -> dict:
    """Tasks were deleted (TASKS_DELETED): their prompts leave the pool."""
    job, pool, controls = pool_and_controls(payload)
    removed = sum(pool.remove_task(int(task_id)) for task_id in payload["tasks"])
    return {"removed": removed, **_after_pool_change(job, pool, services_from_env(), payload)}


@reports_token
def refresh_controls(payload: dict) -> dict:
    """The project changed (PROJECT_UPDATED): re-read its label config from the API; when the controls differ,
    save them and rebuild the pool with them (a new version only then)."""
    job = get_current_job()
    pool = PromptPool(job.connection, payload["project"])
    services = services_from_env()
    config = services.require_client().get_json(f"/api/projects/{pool.project}")["label_config"]
    saved = pool.load_controls()
    controls = parse_label_config(config)
    if saved is not None and saved[0] == controls:
        if saved[1] != config:
            pool.save_controls(controls, config)  # the same controls, written differently: no new version
        return {"changed": False}
    pool.save_controls(controls, config)
    report = sync_from_label_studio(pool, services.require_client(), services.fetcher.fetch, controls)
    return {"changed": True, "entries": report["entries"], **_after_pool_change(job, pool, services, payload)}


def _after_pool_change(job, pool: PromptPool, services, payload: dict) -> dict:
    """The prompts changed, so the model version did; with auto-relabel, re-predict what is still unlabeled."""
    settings = services.settings
    digest = payload.get("weights_digest") or backend_digest(settings, job.connection)
    version = current_model_version(job.connection, settings, pool.project, digest)
    previous = job.connection.get(current_version_key(pool.project))
    if not settings.auto_relabel or payload.get("relabel") is False or pool.size() == 0:
        return {"version": version, "relabel": False}
    if previous is not None and previous.decode() == version:
        return {"version": version, "relabel": False}
    batch = start_bootstrap(job.connection, services, pool.project, only="unlabeled", sync=False,
                            replace_older=not settings.keep_old_predictions, weights_digest=digest)
    return {"version": version, "relabel": True, "queued": batch.queued, "jobs": batch.job_ids}


@reports_token
def prelabel_tasks(payload: dict) -> dict:
    """New tasks were imported: predict them with the current prompts, once the project has a prompt."""
    job, pool, controls = pool_and_controls(payload)
    services = services_from_env()
    if pool.size() == 0:
        return {"queued": 0, "reason": "no prompts yet"}
    batch = start_bootstrap(job.connection, services, pool.project, task_ids=payload["tasks"], sync=False,
                            weights_digest=payload.get("weights_digest"))
    return {"queued": batch.queued, "jobs": batch.job_ids, "version": batch.model_version}


@reports_token
def remove_pool_annotations(payload: dict) -> dict:
    """Drop entries whose annotation was deleted; the task's other annotations are re-read."""
    job, pool, controls = pool_and_controls(payload)
    gone = set(payload["annotations"])
    tasks = {e["task"] for e in pool.entries() if e["annotation"] in gone}
    removed = pool.remove_annotations(gone)
    for task_id in tasks:
        update_pool_for_task({**payload, "task": task_id, "relabel": False})
    return {"removed": removed, **_after_pool_change(job, pool, services_from_env(), payload)}
