"""Bulk pre-labeling of a project: list its tasks, skip what already holds the current version, queue the rest.

Resumable and idempotent: a task that already has a prediction of the current model version is skipped; a task
already queued for that version (by an earlier run still in the queue) is skipped; and the workers check again
just before they write, so a retried or duplicated chunk never creates a second prediction.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Iterable

import redis

from worker import chunked, enqueue_segmentation, job_failures, job_progress
from worker.queue import fetch_job
from worker.waiting import status_ended

from .keys import bootstrap_batch_key, current_version_key, inflight_key
from .label_config import Control, parse_label_config
from .predict_service import model_version
from .prompt_pool import PromptPool, sync_from_label_studio
from .services import Services
from .version_log import record_version
from .weights_identity import backend_digest
from .calibration import project_settings
from .label_studio_io import label_studio_sink

__all__ = ["BootstrapError", "BootstrapBatch", "start_bootstrap", "batch_progress", "batch_failures", "load_batch", "inflight_key", "current_version_key"]

log = logging.getLogger(__name__)


class BootstrapError(RuntimeError):
    """Nothing can be predicted: the project has no usable annotation yet."""


@dataclass
class BootstrapBatch:
    project: int
    model_version: str
    namespace: str
    job_ids: list[str] = field(default_factory=list)
    queued: int = 0
    skipped_predicted: int = 0
    skipped_inflight: int = 0
    skipped_no_image: int = 0
    started_at: float = field(default_factory=time.time)
    resumed_job_ids: list[str] = field(default_factory=list)  # chunks an earlier run left unfinished in the queue

    @property
    def skipped(self) -> int:
        return self.skipped_predicted + self.skipped_inflight + self.skipped_no_image

    @property
    def all_job_ids(self) -> list[str]:
        """This run's chunks and the earlier ones it waits for: the run is over when all have ended."""
        return self.job_ids + [j for j in self.resumed_job_ids if j not in self.job_ids]


def load_batch(connection: redis.Redis, project: int) -> BootstrapBatch | None:
    raw = connection.get(bootstrap_batch_key(project))
    return BootstrapBatch(**json.loads(raw)) if raw else None


def project_controls(services: Services, pool: PromptPool) -> list[Control]:
    project = services.require_client().get_json(f"/api/projects/{pool.project}")
    controls = parse_label_config(project["label_config"])
    pool.save_controls(controls, project["label_config"])
    return controls


def _still_queued(connection: redis.Redis, job_id: str, known: dict[str, bool]) -> bool:
    """Whether the job an earlier run queued a task in has not ended (`known` remembers each job's answer)."""
    if job_id not in known:
        try:
            known[job_id] = not status_ended(fetch_job(connection, job_id).get_status())
        except Exception:  # the job expired or was deleted
            known[job_id] = False
    return known[job_id]


def _prediction_versions(task: dict) -> set[str]:
    """The model versions of a task's predictions, as the task list reports them (fields=all)."""
    versions = task.get("predictions_model_versions")
    if versions is None:
        versions = [p.get("model_version") for p in task.get("predictions") or [] if isinstance(p, dict)]
    elif isinstance(versions, str):  # SQLite's GROUP_CONCAT
        versions = versions.split(",")
    return {v for v in versions if v}


def _is_unlabeled(task: dict) -> bool:
    annotations = task.get("annotations")
    if annotations is not None:
        return not any(not a.get("was_cancelled") for a in annotations)
    return not task.get("is_labeled") and not task.get("total_annotations")


def _holds_results(task: dict) -> bool:
    """Whether the task has an annotation or a prediction: the tasks Label Studio 1.23.2 recounts on every bulk
    import of the project."""
    return bool(task.get("total_annotations") or task.get("cancelled_annotations") or task.get("total_predictions")
                or task.get("annotations") or _prediction_versions(task))


def start_bootstrap(
    connection: redis.Redis,
    services: Services,
    project: int,
    *,
    only: str = "unlabeled",
    limit: int | None = None,
    chunk_size: int | None = None,
    task_ids: Iterable[int] | None = None,
    sync: bool = True,
    replace_older: bool = False,
    weights_digest: str | None = None,
) -> BootstrapBatch:
    """Queue predictions for a project's tasks (`only` "unlabeled" or "all"; or exactly `task_ids`), for the
    weights `weights_digest` (default: this process's, see `weights_identity`)."""
    if only not in ("unlabeled", "all"):
        raise ValueError(f"--only must be unlabeled or all, got {only!r}")
    settings, client = project_settings(connection, services.settings, project), services.require_client()
    pool = PromptPool(connection, project)
    controls = project_controls(services, pool)
    sync_errors: dict = {}
    if sync:
        sync_errors = sync_from_label_studio(pool, client, services.fetcher.fetch, controls, services.settings.max_pixels)["errors"]
        for task_id, reason in sync_errors.items():
            log.warning("task %s: its annotation is not used as a prompt: %s", task_id, reason)
    if pool.size() == 0:
        detail = "; ".join(f"task {t}: {r}" for t, r in list(sync_errors.items())[:5])
        raise BootstrapError(f"project {project} has no usable annotated task to prompt with" + (f" ({detail})" if detail else ": annotate a few tasks first"))
    digest = weights_digest or backend_digest(settings, connection)
    version = model_version(settings, pool.version(), digest, controls)
    record_version(connection, project, version, pool.size())
    connection.set(current_version_key(project), version)
    wanted = set(task_ids) if task_ids is not None else None
    batch = BootstrapBatch(project, version, f"bootstrap:{project}:{uuid.uuid4().hex[:12]}")
    inflight = inflight_key(project, version)
    size = chunk_size or settings.chunk_size
    fields: dict[str, tuple] = {}  # data key -> (prompts, sink) of the fields that can be predicted
    for data_key in sorted({c.data_key for c in controls}):
        field_controls = [c for c in controls if c.data_key == data_key]
        prompts, sources = pool.prompt_set_with_sources(data_key, field_controls, settings.candidates_per_label, settings.excluded_prompts)
        if prompts is None:
            log.warning("project %s: no annotated task for $%s yet: nothing to predict from", project, data_key)
            continue
        fields[data_key] = (prompts, field_controls, sources)
    buffers: dict[str, list[dict]] = {key: [] for key in fields}
    holding = 0  # tasks seen that have an annotation or a prediction

    def enqueue(data_key: str, refs: list[dict]) -> None:
        prompts, field_controls, sources = fields[data_key]
        for chunk in chunked(refs, size):
            # by the time this chunk is written, about this many tasks hold results for Label Studio to recount
            each = 0 <= settings.import_each_above < holding + batch.queued
            sink = label_studio_sink(project, version, field_controls, bulk=True, replace_older=replace_older,
                                     region_filter=settings.region_filter, import_each=each, prompt_sources=sources)
            _, ids = enqueue_segmentation(connection, prompts, chunk, chunk_size=size, queue=settings.queue,
                                          namespace=f"{batch.namespace}:{data_key}", options=settings.prediction_options,
                                          weights_digest=digest, sink=sink, run=batch.namespace)
            batch.job_ids.extend(ids)
            batch.queued += len(chunk)
            connection.hset(inflight, mapping={str(ref["id"]): ids[0] for ref in chunk})
        connection.expire(inflight, 30 * 24 * 3600)

    # Page by page: the project's tasks (with their predictions) are never all in memory; whole chunks are queued
    # as soon as they fill, so workers start on the first page while later ones are read.
    data_keys = sorted({c.data_key for c in controls})
    selected = 0
    statuses: dict[str, bool] = {}
    for page in chunked(client.iter_tasks(project), 100):
        holding += sum(_holds_results(t) for t in page)
        # a task with an annotation is never re-predicted unless the user asks for all (human work comes first)
        chosen = [t for t in page if (wanted is None or t["id"] in wanted) and (only == "all" or _is_unlabeled(t))]
        if limit is not None:
            chosen = chosen[: max(0, limit - selected)]
        selected += len(chosen)
        queued_for = connection.hmget(inflight, [str(t["id"]) for t in chosen]) if chosen else []
        for task, job_id in zip(chosen, queued_for):
            if version in _prediction_versions(task):
                batch.skipped_predicted += 1
            elif job_id is not None and _still_queued(connection, job_id.decode(), statuses):
                batch.skipped_inflight += 1  # queued by an earlier run, not finished yet
            elif not any((task.get("data") or {}).get(key) is not None for key in data_keys):
                batch.skipped_no_image += 1
            else:
                for data_key, buffer in buffers.items():
                    value = (task.get("data") or {}).get(data_key)
                    if value is not None:
                        buffer.append({"id": task["id"], "image": {"label_studio": {"value": value, "task": task["id"]}}})
        for data_key, buffer in buffers.items():
            full = len(buffer) - len(buffer) % size
            if full:
                enqueue(data_key, buffer[:full])
                del buffer[:full]
        if limit is not None and selected >= limit:
            break
    for data_key, buffer in buffers.items():
        if buffer:
            enqueue(data_key, buffer)
    batch.resumed_job_ids = sorted(job_id for job_id, unfinished in statuses.items() if unfinished)
    connection.set(bootstrap_batch_key(project), json.dumps(asdict(batch)), ex=30 * 24 * 3600)
    return batch


def batch_progress(connection: redis.Redis, batch: BootstrapBatch) -> dict:
    return job_progress(connection, batch.all_job_ids)


def batch_failures(connection: redis.Redis, batch: BootstrapBatch) -> dict[str, str]:
    return job_failures(connection, batch.all_job_ids)
