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
from typing import Iterable, Iterator

import redis

from worker import chunked, enqueue_segmentation, job_failures, job_progress
from worker.queue import fetch_job
from worker.waiting import status_ended

from .field_plan import FieldPlan, plan_fields
from .keys import BOOTSTRAP_BATCH_TTL, INFLIGHT_TTL, bootstrap_batch_key, current_version_key, inflight_key
from .label_config import Control, parse_label_config
from .predict_service import model_version
from .prompt_pool import PromptPool, newest_annotation, sync_from_label_studio
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


@dataclass(frozen=True, slots=True)
class _Listed:
    """What bootstrap keeps of a listed task: a few fields, never its annotations or predictions' results."""

    id: int
    data: dict  # the task's values of the image fields the controls read
    versions: frozenset  # the model versions of its predictions
    unlabeled: bool
    holds_results: bool

    @classmethod
    def of(cls, task: dict, data_keys: Iterable[str]) -> "_Listed":
        data = task.get("data") or {}
        return cls(task["id"], {key: data[key] for key in data_keys if data.get(key) is not None},
                   frozenset(_prediction_versions(task)), _is_unlabeled(task), _holds_results(task))


def _listing(services: Services, pool: PromptPool, controls: list[Control], sync: bool) -> Iterator[_Listed]:
    """The project's tasks, as their short `_Listed` records, page by page as they are read. With `sync`, the
    prompt pool is rebuilt first, from the annotated tasks alone (the model version, which decides what is
    skipped, needs the whole pool): one page of a project's listing, so that chunks are queued while the rest
    of the list is still being read."""
    client = services.require_client()
    data_keys = sorted({c.data_key for c in controls})
    annotated: set[int] | None = None  # with `sync`: the tasks whose annotation the pool was rebuilt from
    if sync:
        outcome = sync_from_label_studio(pool, client, services.fetcher.fetch, controls, services.settings.max_pixels)
        errors, annotated = outcome["errors"], outcome["annotated"]
        for task_id, reason in errors.items():
            log.warning("task %s: its annotation is not used as a prompt: %s", task_id, reason)
        if pool.size() == 0:
            detail = "; ".join(f"task {t}: {r}" for t, r in list(errors.items())[:5])
            raise BootstrapError(f"project {pool.project} has no usable annotated task to prompt with" + (f" ({detail})" if detail else ": annotate a few tasks first"))
    return _listed(client.iter_tasks(pool.project), data_keys, annotated)


def _listed(tasks: Iterable[dict], data_keys: list[str], annotated: set[int] | None) -> Iterator[_Listed]:
    for task in tasks:
        if annotated is not None and task["id"] not in annotated and newest_annotation(task.get("annotations")) is not None:
            # annotated since the pool's listing (or counted stale by Label Studio): as if it came just after this run
            log.warning("task %s: annotated after this run read its prompts; the next pool sync uses it", task["id"])
        yield _Listed.of(task, data_keys)


class _Queuer:
    """Buffers the chosen tasks per image field and queues them a whole chunk at a time."""

    def __init__(self, connection: redis.Redis, settings, batch: BootstrapBatch, plans: list[FieldPlan], digest: str,
                 size: int, replace_older: bool) -> None:
        self.connection, self.settings, self.batch, self.digest, self.size = connection, settings, batch, digest, size
        self.replace_older = replace_older
        self.plans = {plan.data_key: plan for plan in plans if plan.prompts is not None}
        self.buffers: dict[str, list[dict]] = {key: [] for key in self.plans}
        self.inflight = inflight_key(batch.project, batch.model_version)
        self.holding = 0  # tasks seen that have an annotation or a prediction

    def add(self, task: _Listed) -> None:
        for data_key, buffer in self.buffers.items():
            ref = self.plans[data_key].task_ref({"id": task.id, "data": task.data})
            if ref is not None:
                buffer.append(ref)

    def queue(self, whole_chunks_only: bool) -> None:
        for data_key, buffer in self.buffers.items():
            ready = len(buffer) - len(buffer) % self.size if whole_chunks_only else len(buffer)
            if ready:
                self._enqueue(self.plans[data_key], buffer[:ready])
                del buffer[:ready]

    def _enqueue(self, plan: FieldPlan, refs: list[dict]) -> None:
        settings, batch = self.settings, self.batch
        for chunk in chunked(refs, self.size):
            # by the time this chunk is written, about this many tasks hold results for Label Studio to recount
            each = 0 <= settings.import_each_above < self.holding + batch.queued
            sink = label_studio_sink(batch.project, batch.model_version, plan.controls, bulk=True, replace_older=self.replace_older,
                                     region_filter=settings.region_filter, import_each=each, prompt_sources=plan.sources)
            _, ids = enqueue_segmentation(self.connection, plan.prompts, chunk, chunk_size=self.size, queue=settings.queue,
                                          namespace=f"{batch.namespace}:{plan.data_key}", options=settings.prediction_options,
                                          weights_digest=self.digest, sink=sink, run=batch.namespace)
            batch.job_ids.extend(ids)
            batch.queued += len(chunk)
            self.connection.hset(self.inflight, mapping={str(ref["id"]): ids[0] for ref in chunk})
        self.connection.expire(self.inflight, INFLIGHT_TTL)


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
    settings = project_settings(connection, services.settings, project)
    pool = PromptPool(connection, project)
    controls = project_controls(services, pool)
    listing = _listing(services, pool, controls, sync)
    if pool.size() == 0:
        raise BootstrapError(f"project {project} has no usable annotated task to prompt with: annotate a few tasks first")
    digest = weights_digest or backend_digest(settings, connection)
    version = model_version(settings, pool.version(), digest, controls)
    record_version(connection, project, version, pool.size())
    connection.set(current_version_key(project), version)
    batch = BootstrapBatch(project, version, f"bootstrap:{project}:{uuid.uuid4().hex[:12]}")
    plans = plan_fields(pool, controls, settings)
    for plan in plans:
        if plan.prompts is None:
            log.warning("project %s: no annotated task for $%s yet: nothing to predict from", project, plan.data_key)
    queuer = _Queuer(connection, settings, batch, plans, digest, chunk_size or settings.bulk_chunk_size, replace_older)
    statuses: dict[str, bool] = {}
    try:
        _choose(connection, batch, queuer, listing, only, limit, set(task_ids) if task_ids is not None else None, statuses)
    finally:
        # chunks queued before a failure (Label Studio's, while later pages were read) run: status and a re-run see them
        if batch.job_ids or statuses:
            batch.resumed_job_ids = sorted(job_id for job_id, unfinished in statuses.items() if unfinished)
            connection.set(bootstrap_batch_key(project), json.dumps(asdict(batch)), ex=BOOTSTRAP_BATCH_TTL)
    return batch


def _choose(connection: redis.Redis, batch: BootstrapBatch, queuer: _Queuer, listing: Iterable[_Listed], only: str,
            limit: int | None, wanted: set | None, statuses: dict[str, bool]) -> None:
    """Hand the listed tasks that need a prediction to `queuer`, a page at a time, so that workers start on the
    first whole chunks while later pages are read; count what is skipped. Notes in `statuses` the earlier runs'
    jobs met (job id -> still unfinished)."""
    selected = 0
    for page in chunked(listing, 100):
        queuer.holding += sum(t.holds_results for t in page)
        # a task with an annotation is never re-predicted unless the user asks for all (human work comes first)
        chosen = [t for t in page if (wanted is None or t.id in wanted) and (only == "all" or t.unlabeled)]
        if limit is not None:
            chosen = chosen[: max(0, limit - selected)]
        selected += len(chosen)
        queued_for = connection.hmget(queuer.inflight, [str(t.id) for t in chosen]) if chosen else []
        for task, job_id in zip(chosen, queued_for):
            if batch.model_version in task.versions:
                batch.skipped_predicted += 1
            elif job_id is not None and _still_queued(connection, job_id.decode(), statuses):
                batch.skipped_inflight += 1  # queued by an earlier run, not finished yet
            elif not task.data:
                batch.skipped_no_image += 1
            else:
                queuer.add(task)
        queuer.queue(whole_chunks_only=True)
        if limit is not None and selected >= limit:
            break
    queuer.queue(whole_chunks_only=False)


def batch_progress(connection: redis.Redis, batch: BootstrapBatch) -> dict:
    return job_progress(connection, batch.all_job_ids)


def batch_failures(connection: redis.Redis, batch: BootstrapBatch) -> dict[str, str]:
    return job_failures(connection, batch.all_job_ids)
