"""Review records from Label Studio: a job that re-reads the annotated tasks a webhook named (its body is only a
hint), and the rebuild of a project's records from Label Studio, which gives the same records."""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import redis

from worker import JobContext

from .control_jobs import reports_token
from .label_config import Control, parse_label_config
from .ls_client import LabelStudioError
from .prompt_pool import PromptPool
from .review_records import made_from, review_record
from .review_report import summarize
from .review_store import clear_records, load_records, prompts_used, remove_record, save_record, save_summary
from .settings import Settings
from .webhook_hints import note_hints, schedule_hint_job, take_hints

__all__ = ["queue_review", "apply_review_hints", "review_tasks", "rebuild_reviews", "refresh_summary", "project_labels"]

log = logging.getLogger(__name__)
REVIEW_FUNCTION = "backend.review_jobs.apply_review_hints"


def queue_review(connection: redis.Redis, settings: Settings, project: int, tasks: Iterable[object] = (),
                 annotations: Iterable[object] = ()) -> None:
    """The webhook's hook, given hints: the tasks whose annotations changed (or the deleted annotations' ids) get
    their review records re-read from Label Studio, by one job per project however many events arrive (coalesced
    like the other webhook work, `webhook_hints`; past its bound a hint turns into a rebuild of the project)."""
    ids = sorted({int(t) for t in tasks if t is not None})
    gone = sorted({int(a) for a in annotations if a is not None})
    if not ids and not gone:
        return
    note_hints(connection, project, "review", ids)
    note_hints(connection, project, "review-gone", gone)
    schedule_hint_job(connection, settings, project, "review", REVIEW_FUNCTION, {},
                      f"review records of project {project} (webhook hints)")


@reports_token
def apply_review_hints(payload: dict, context: JobContext) -> dict:
    """`{"project": id, "hint_job": ...}`: the review records of the hinted tasks, re-read from Label Studio."""
    connection = context.connection
    project = int(payload["project"])
    tasks, full = take_hints(connection, project, "review", payload.get("hint_job"))
    gone, full_gone = take_hints(connection, project, "review-gone", None)
    if full or full_gone:
        services = context.services
        return rebuild_reviews(connection, services.settings, services.require_client(), project)
    if not tasks and not gone:
        return {"project": project, "nothing": "to do (an earlier job took the hints)"}
    return review_tasks({"project": project, "tasks": tasks, "annotations": gone}, context)


def project_controls(connection: redis.Redis, client, project: int) -> list[Control]:
    saved = PromptPool(connection, project).load_controls()
    if saved is not None:
        return saved[0]
    return parse_label_config(client.get_json(f"/api/projects/{project}")["label_config"])


def project_labels(controls: Sequence[Control]) -> list[str]:
    """The labels a report and /metrics may name: the project's config, never anything a request carried."""
    return sorted({label for control in controls for label in control.labels})


def newest_review(annotations: Iterable[dict]) -> dict | None:
    """The task's newest annotation that was not cancelled (skipped); an empty one counts: all regions deleted."""
    usable = [a for a in annotations or () if not a.get("was_cancelled")]
    return max(usable, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0)) if usable else None


def _record(connection: redis.Redis, project: int, task_id: int, annotations: list, predictions: list, controls) -> dict | None:
    annotation = newest_review(annotations)
    if annotation is None:
        return None
    source = made_from(annotation, predictions)
    used = prompts_used(connection, project, str(source.get("model_version")), task_id) if source is not None else {}
    return review_record(task_id, annotation, predictions, controls, used)


def refresh_summary(connection: redis.Redis, settings: Settings, project: int, controls: Sequence[Control]) -> dict:
    """Recompute the project's numbers and calibrated thresholds from its records (for /metrics and
    SEGGPT_AUTO_THRESHOLDS)."""
    summary = summarize(project, load_records(connection, project), project_labels(controls), settings.calibration_min_regions)
    save_summary(connection, project, summary)
    return summary


def review_tasks(payload: dict, context: JobContext) -> dict:
    """Job: re-read each task's annotations and predictions from Label Studio and write its review record."""
    connection = context.connection
    services = context.services
    client = services.require_client()
    project = int(payload["project"])
    controls = project_controls(connection, client, project)
    outcome = {}
    gone = set(payload.get("annotations") or ())
    tasks = set(payload.get("tasks") or ()) | {r["task"] for r in load_records(connection, project) if r.get("annotation") in gone}
    for task_id in sorted(tasks):
        try:
            annotations, predictions = client.annotations(task_id), client.predictions(task_id)
        except LabelStudioError as exc:
            if exc.status != 404:
                raise  # Label Studio down or refusing: the job is retried, nothing is written meanwhile
            annotations, predictions = [], []  # the task is gone: so is its record
        try:
            record = _record(connection, project, int(task_id), annotations, predictions, controls)
        except (ValueError, KeyError, TypeError) as exc:  # one task's odd annotation never stops the others
            outcome[str(task_id)] = f"{type(exc).__name__}: {exc}"
            log.warning("project %s: task %s: no review record: %s", project, task_id, exc)
            continue
        if record is None:
            remove_record(connection, project, task_id)
            outcome[str(task_id)] = "no annotation"
        else:
            save_record(connection, project, record, services.settings.review_max_records)
            outcome[str(task_id)] = "reviewed" if record["from_prediction"] else "from scratch"
    refresh_summary(connection, services.settings, project, controls)
    return {"tasks": outcome}


def rebuild_reviews(connection: redis.Redis, settings: Settings, client, project: int) -> dict:
    """Every record of the project again, from Label Studio (page by page); returns counts."""
    controls = project_controls(connection, client, project)
    records, errors = [], {}
    for task in client.iter_tasks(project):
        try:
            record = _record(connection, project, task["id"], task.get("annotations") or [], task.get("predictions") or [], controls)
        except (ValueError, KeyError, TypeError) as exc:
            errors[task["id"]] = f"{type(exc).__name__}: {exc}"
            continue
        if record is not None:
            records.append(record)
    clear_records(connection, project)
    for record in records:
        save_record(connection, project, record, settings.review_max_records)
    refresh_summary(connection, settings, project, controls)
    return {"records": len(records), "errors": errors}
