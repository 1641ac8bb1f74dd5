"""Backend job functions that run in worker processes (enqueued by import path through the job layer)."""

from __future__ import annotations

import logging

from rq import get_current_job

from .label_config import parse_label_config
from .bootstrap import start_bootstrap
from .keys import current_version_key
from .predict_service import current_model_version
from .prompt_pool import PromptPool, sync_from_label_studio
from .services import services_from_env
from .weights_identity import backend_digest

# The webhook jobs are in `webhook_hints`: they act on hints, coalesced per project.
__all__ = ["sync_pool", "pool_and_controls", "after_pool_change"]

log = logging.getLogger(__name__)


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
    report = sync_from_label_studio(pool, services.require_client(), services.fetcher.fetch, controls)
    job.meta.update({"entries": report["entries"], "errors": report["errors"]})
    job.save_meta()
    return {"entries": report["entries"], "errors": {str(k): v for k, v in report["errors"].items()}, "version": pool.version()}


def after_pool_change(job, pool: PromptPool, services, payload: dict) -> dict:
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


