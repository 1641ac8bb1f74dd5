"""Backend job functions on the control queue, run by a control worker (no model), each given its `JobContext`."""

from __future__ import annotations

import functools
import logging
from typing import Callable

from worker import JobContext

from .label_config import parse_label_config
from .bootstrap import start_bootstrap
from .keys import POOL_SYNC_FAILED_TTL, current_version_key, pool_sync_due_key, pool_sync_failed_key
from .ls_client import LabelStudioAuthError, LabelStudioError
from .ls_faults import note_label_studio_ok, report_token_rejected
from .predict_service import current_model_version
from .prompt_pool import PromptPool, sync_from_label_studio
from .weights_identity import backend_digest

# The webhook jobs are in `webhook_hints`: they act on hints, coalesced per project.
__all__ = ["SYNC_FUNCTION", "sync_pool", "pool_and_controls", "after_pool_change", "reports_token", "sync_failed"]

log = logging.getLogger(__name__)

SYNC_FUNCTION = "backend.control_jobs.sync_pool"


def reports_token(function: Callable[[dict, JobContext], dict]) -> Callable[[dict, JobContext], dict]:
    """A job that calls Label Studio: a rejected token is reported (for /health and status, logged once a minute)
    before the job fails with its one line."""
    @functools.wraps(function)
    def job(payload: dict, context: JobContext) -> dict:
        try:
            return function(payload, context)
        except LabelStudioAuthError as exc:
            report_token_rejected(context.connection, exc)
            raise

    return job


def pool_and_controls(payload: dict, context: JobContext):
    """The project's pool and its saved controls (saved from the payload's label config when there are none yet)."""
    pool = PromptPool(context.connection, payload["project"])
    saved = pool.load_controls()
    if saved is None:
        controls = parse_label_config(payload["label_config"])
        pool.save_controls(controls, payload["label_config"])
    else:
        controls = saved[0]
    return pool, controls


def sync_pool(payload: dict, context: JobContext) -> dict:
    """Rebuild a project's prompt pool from Label Studio: `{"project": id, "label_config": "<View>..."}`."""
    pool, controls = pool_and_controls(payload, context)
    services = context.services
    try:
        report = sync_from_label_studio(pool, services.require_client(), services.fetcher.fetch, controls, services.settings.max_pixels)
    except LabelStudioError as exc:
        return sync_failed(context.connection, pool.project, exc)
    context.connection.delete(pool_sync_failed_key(pool.project))
    note_label_studio_ok(context.connection)
    if context.job is not None:
        context.job.meta.update({"entries": report["entries"], "errors": report["errors"]})
        context.job.save_meta()
    return {"entries": report["entries"], "errors": {str(k): v for k, v in report["errors"].items()}, "version": pool.version()}


SYNC_RETRY_AFTER = 15  # seconds: after a failed sync, the next /setup may start another this soon (not SYNC_EVERY)


def sync_failed(connection, project: int, error: LabelStudioError) -> dict:
    """A sync that Label Studio made fail: the pool stays as it was, /predict says why it has no prompts, the next
    /setup after SYNC_RETRY_AFTER seconds tries again, and the job ends (RQ's immediate retries would only meet
    the same fault)."""
    with connection.pipeline() as pipe:
        pipe.set(pool_sync_failed_key(project), str(error), ex=POOL_SYNC_FAILED_TTL)
        pipe.set(pool_sync_due_key(project), 1, ex=SYNC_RETRY_AFTER)
        pipe.execute()
    if isinstance(error, LabelStudioAuthError):
        report_token_rejected(connection, error)
    else:
        log.warning("project %s: prompt-pool sync failed, retried in %d s at the earliest: %s", project, SYNC_RETRY_AFTER, error)
    return {"error": str(error)}


def after_pool_change(context: JobContext, pool: PromptPool, payload: dict) -> dict:
    """The prompts changed, so the model version did; with auto-relabel, re-predict what is still unlabeled."""
    connection, services = context.connection, context.services
    settings = services.settings
    digest = payload.get("weights_digest") or backend_digest(settings, connection)
    version = current_model_version(connection, settings, pool.project, digest)
    previous = connection.get(current_version_key(pool.project))
    if not settings.auto_relabel or payload.get("relabel") is False or pool.size() == 0:
        return {"version": version, "relabel": False}
    if previous is not None and previous.decode() == version:
        return {"version": version, "relabel": False}
    batch = start_bootstrap(connection, services, pool.project, only="unlabeled", sync=False,
                            replace_older=not settings.keep_old_predictions, weights_digest=digest)
    return {"version": version, "relabel": True, "queued": batch.queued, "jobs": batch.job_ids}
