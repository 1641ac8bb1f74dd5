"""The /predict path: queue the tasks, wait within the budget, answer exactly one item per task, in order.

Inference never runs here. What finishes within the budget is returned; the request then closes (atomically,
see `label_studio_io`), and whatever finishes later is written into Label Studio by the workers with the same
model version. A task still in progress is answered with an empty list (Label Studio stores nothing for it);
a task whose image is at fault gets an empty result (final) and its reason is logged; a task that failed because
of the system (a model error, Redis, Label Studio's 5xx) gets nothing, so that a later request retries it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Iterable, Sequence

import redis

from worker import enqueue_segmentation, input_failures, job_failures
from worker.metrics import count
from worker.payloads import PredictionOptions
from worker.waiting import wait_for_jobs

from .label_config import Control, parse_label_config
from .calibration import project_settings
from .field_plan import plan_fields
from .prompt_pool import PromptPool
from .region_filter import RegionFilter
from .settings import Settings
from .version_log import record_version
from .keys import REQUEST_TTL, pool_sync_failed_key, request_keys
from .weights_identity import backend_digest
from .label_studio_io import label_studio_sink
from .context_marks import marks_from_context

__all__ = ["RequestError", "LabelConfigConflict", "model_version", "version_of", "project_id", "predict_tasks", "predict_interactive",
           "current_model_version"]

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """What a request asks for cannot be done as sent: a project id that is not one, no label config to predict
    with, a task without the image field its marks are on (answered 422, see `http_errors`)."""


def project_id(value: object) -> int:
    """Label Studio sends "12.1724151234" (id.timestamp); the id is the part before the dot."""
    try:
        return int(str(value).split(".", 1)[0])
    except ValueError:
        raise RequestError(f"project {value!r} is not '<id>' or '<id>.<timestamp>'") from None


def version_of(options: PredictionOptions, weights: str, pool_version: str, regions: RegionFilter = RegionFilter(),
               controls: Sequence[Control] = (), excluded_prompts: Iterable[int] = ()) -> str:
    """The model version of predictions made by jobs that carry `options` and the weights `weights` (their
    digest), with prompts from the pool at `pool_version` less `excluded_prompts`, written through a sink that
    filters regions by `regions` and the controls' own thresholds. Deterministic, and the same string as before
    the options were typed."""
    fingerprint = {"weights": weights, **options.fingerprint()}
    if regions.active:
        fingerprint["regions"] = regions.to_json()
    if excluded_prompts:
        fingerprint["excluded_prompts"] = sorted(excluded_prompts)
    thresholds = {c.name: c.score_threshold for c in controls if c.score_threshold}
    if thresholds:
        fingerprint["control_thresholds"] = dict(sorted(thresholds.items()))
    body = json.dumps({"settings": fingerprint, "pool": pool_version}, sort_keys=True)
    return f"seggpt-{hashlib.sha256(body.encode()).hexdigest()[:12]}"


def model_version(settings: Settings, pool_version: str, weights_digest: str | None = None, controls: Sequence[Control] = ()) -> str:
    """The version of the jobs these settings queue (`Settings.prediction_options`, the region filter, the
    excluded prompts), for the weights `weights_digest` (their content; the name only when no digest is known)."""
    return version_of(settings.prediction_options, weights_digest or settings.weights, pool_version, settings.region_filter,
                      controls, settings.excluded_prompts)


def current_model_version(connection: redis.Redis, settings: Settings, project: int, weights_digest: str | None = None) -> str:
    """The version the project's pool and saved controls give now (for `weights_digest`, default this process's
    weights)."""
    pool = PromptPool(connection, project)
    saved = pool.load_controls()
    digest = weights_digest or backend_digest(settings, connection)
    settings = project_settings(connection, settings, project)
    return model_version(settings, pool.version(), digest, saved[0] if saved else ())


class LabelConfigConflict(ValueError):
    """A /predict names a label config whose controls differ from the project's saved ones."""


def _controls_for(pool: PromptPool, label_config: str | None) -> list[Control]:
    """The controls to predict with. A request's label config is saved when the project has none yet; one that
    differs from the saved controls is refused: it used to replace them silently under the same model version.
    Label Studio calls /setup (which saves a new config) before every /predict, so its own requests agree."""
    saved = pool.load_controls()
    if label_config:
        controls = parse_label_config(label_config)
        if saved is None:
            pool.save_controls(controls, label_config)
            return controls
        if saved[0] != controls:
            raise LabelConfigConflict(
                f"label_config differs from the one saved for project {pool.project} by /setup "
                f"(controls {_describe(controls)} against {_describe(saved[0])}); send it to /setup first")
        return saved[0]
    if saved is None:
        raise RequestError("no label config: neither in the request nor saved by an earlier /setup")
    return saved[0]


def _describe(controls: Sequence[Control]) -> str:
    return ", ".join(f"{c.name}({','.join(c.labels)})" for c in controls) or "none"


def _close_request(connection: redis.Redis, request: str) -> dict[str, dict]:
    """Close a waiting request (later results go to Label Studio, or nowhere for suggestions) and return what it
    holds: task id -> prediction."""
    closed, results = request_keys(request)
    with connection.pipeline(transaction=True) as pipe:
        pipe.set(closed, 1, ex=REQUEST_TTL)
        pipe.hgetall(results)
        pipe.delete(results)  # read once: nothing writes to a closed request (460 of them held 24 MB for a day)
        _, stored, _ = pipe.execute()
    return {k.decode(): json.loads(v) for k, v in stored.items()}


def predict_interactive(connection: redis.Redis, settings: Settings, task: dict, project: object, label_config: str | None,
                        context: dict) -> tuple[list, str]:
    """The open task segmented from what the annotator marked in it (see `context_marks`), together with the pool's
    prompts for those labels: one suggestion with a region per instance found. Raises ContextError for a context it
    cannot read, RequestError without a label config."""
    pid = project_id(project)
    settings = project_settings(connection, settings, pid)
    pool = PromptPool(connection, pid)
    digest = backend_digest(settings, connection)
    controls = _controls_for(pool, label_config)
    version = model_version(settings, pool.version(), digest, controls)
    request = f"{uuid.uuid4().hex}:interactive"
    batch_jobs = []
    marked = marks_from_context(context, controls)
    for plan in plan_fields(pool, controls, settings, marked):
        data_key = plan.data_key
        ref = plan.task_ref(task, marks=marked[data_key])
        if ref is None:
            raise RequestError(f"task {task.get('id')} has no data field {data_key!r}, which the marked image shows")
        _, ids = enqueue_segmentation(
            connection, plan.prompts, [ref],
            queue=settings.interactive_queue, namespace=f"{request}:{data_key}", options=settings.prediction_options,
            weights_digest=digest, at_front=True,
            sink=label_studio_sink(pid, version, plan.controls, request=f"{request}:{data_key}", region_filter=settings.region_filter,
                                   interactive=True),
        )
        batch_jobs.append((data_key, ids))
    job_ids = [i for _, ids in batch_jobs for i in ids]
    wait_for_jobs(connection, job_ids, interval=0.02, timeout=settings.predict_budget)
    parts = [_close_request(connection, f"{request}:{data_key}").get(str(task["id"])) for data_key, _ in batch_jobs]
    if any(p is None for p in parts):
        failures = job_failures(connection, job_ids)
        log.error("task %s: no suggestion from the marks in its image (%s)", task.get("id"),
                  failures.get(str(task["id"])) or f"not done within {settings.predict_budget} s")
        count(connection, "interactive_failed")
        return [[]], version
    regions = [r for p in parts for r in p["result"]]
    scores = [r["score"] for r in regions]
    count(connection, "interactive_requests")
    return [{"result": regions, "score": round(sum(scores) / len(scores), 4) if scores else 0.0, "model_version": version}], version


def predict_tasks(connection: redis.Redis, settings: Settings, tasks: Sequence[dict], project: object, label_config: str | None) -> tuple[list, str]:
    """Returns (one item per task, model version)."""
    pid = project_id(project)
    settings = project_settings(connection, settings, pid)
    pool = PromptPool(connection, pid)
    digest = backend_digest(settings, connection)
    try:
        controls = _controls_for(pool, label_config)  # a LabelConfigError or a conflict: the route answers 4xx
    except RequestError as exc:  # no label config yet: an empty answer, as Label Studio stores nothing for it
        version = model_version(settings, pool.version(), digest)
        log.error("project %s: cannot predict: %s", pid, exc)
        return [{"result": [], "score": 0.0, "model_version": version} for _ in tasks], version
    version = model_version(settings, pool.version(), digest, controls)
    record_version(connection, pid, version, pool.size())
    empty = {"result": [], "score": 0.0, "model_version": version}
    request_id = uuid.uuid4().hex
    sync_failure: str | None = None
    job_ids: list[str] = []
    pending: dict[int, set[str]] = {}  # task position -> data keys still expected
    for plan in plan_fields(pool, controls, settings):
        data_key = plan.data_key
        if plan.prompts is None:
            sync_failure = _sync_failure(connection, pid)
            if sync_failure:
                # not "no prompts yet": the prompts could not be read, so nothing is answered for good
                log.warning("project %s: no prompts for $%s because the prompt-pool sync failed: %s; nothing stored, "
                            "the next request retries", pid, data_key, sync_failure)
            else:
                log.info("project %s: no prompts yet for $%s; annotate a few tasks first", pid, data_key)
            continue
        batch = []
        for position, task in enumerate(tasks):
            ref = plan.task_ref(task)
            if ref is None:
                log.warning("task %s has no data field %r", task.get("id"), data_key)
                continue
            batch.append(ref)
            pending.setdefault(position, set()).add(data_key)
        if batch:
            _, ids = enqueue_segmentation(
                connection, plan.prompts, batch, chunk_size=settings.chunk_size, queue=settings.interactive_queue,
                namespace=f"{request_id}:{data_key}", options=settings.prediction_options, weights_digest=digest,
                sink=label_studio_sink(pid, version, plan.controls, request=f"{request_id}:{data_key}", region_filter=settings.region_filter,
                                       prompt_sources=plan.sources),
            )
            job_ids.extend(ids)
    if sync_failure:
        empty = []  # a system fault: Label Studio must store nothing, and ask again
    if not job_ids:
        return [_copy(empty) for _ in tasks], version

    wait_for_jobs(connection, job_ids, interval=0.05, timeout=settings.predict_budget)
    delivered = {data_key: _close_request(connection, f"{request_id}:{data_key}") for data_key in {k for keys in pending.values() for k in keys}}

    failures = job_failures(connection, job_ids)
    final = input_failures(connection, job_ids)
    answer = []
    system_faults: dict[str, list] = {}  # reason -> task ids: one line per reason, not one per task
    for position, task in enumerate(tasks):
        keys = pending.get(position)
        if not keys:
            answer.append(_copy(empty))
            continue
        parts = [delivered[k].get(str(task["id"])) for k in sorted(keys)]
        if all(p is not None for p in parts):
            merged = {"result": [r for p in parts for r in p["result"]], "model_version": version}
            merged["score"] = round(sum(p["score"] for p in parts) / len(parts), 4)
            answer.append(merged)
        elif str(task["id"]) in final:
            log.error("task %s: no prediction, because of its image: %s", task["id"], failures[str(task["id"])])
            answer.append(dict(empty))  # final: Label Studio keeps it, and asking again would fail the same way
        elif str(task["id"]) in failures:
            # A system fault: store nothing, so that the next /predict or bootstrap tries again.
            system_faults.setdefault(failures[str(task["id"])], []).append(task["id"])
            answer.append([])
        else:
            answer.append([])  # still running: the worker writes it into Label Studio when done
    for reason, ids in system_faults.items():
        count(connection, "predict_tasks_failed_system", len(ids))
        # a rejected token is already said once a minute by whoever met it (ls_faults)
        log.log(logging.DEBUG if reason.startswith("Label Studio rejects the token") else logging.ERROR,
                "task(s) %s: prediction failed (system fault, not stored; retried next time): %s", ", ".join(map(str, ids)), reason)
    return answer, version


def _copy(item: dict | list) -> dict | list:
    return dict(item) if isinstance(item, dict) else []


def _sync_failure(connection: redis.Redis, project: int) -> str | None:
    raw = connection.get(pool_sync_failed_key(project))
    return raw.decode() if raw else None
