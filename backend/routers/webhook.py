"""POST /webhook: Label Studio project events. Answered at once (Label Studio waits 1 s); work is queued.

Label Studio sends webhooks without credentials, so this route does not require Basic auth: a webhook body is
only a hint, and every job it starts re-reads the annotations from the Label Studio API.
"""

import logging

from fastapi import APIRouter

from worker import enqueue_call

from ..dependencies import RedisDep, SettingsDep
from ..metrics import count
from ..prompt_training import enqueue_prompt_tuning
from ..review_jobs import queue_review
from ..schemas import WebhookEvent
from ..weights_identity import WeightsUnknown, backend_digest

router = APIRouter()
log = logging.getLogger(__name__)


def _digest_or_none(settings, connection) -> str | None:
    """The jobs a webhook queues predict under this process's weights digest; None lets them work it out."""
    try:
        return backend_digest(settings, connection)
    except WeightsUnknown:
        return None


@router.post("/webhook")
def webhook(event: WebhookEvent, settings: SettingsDep, connection: RedisDep) -> dict:
    count(connection, f"webhook_{event.action.lower()}")
    project = (event.project or {}).get("id")
    label_config = (event.project or {}).get("label_config")
    if project is None:
        return {"status": "ignored", "reason": "no project in the event"}
    base = {"project": project, "label_config": label_config, "weights_digest": _digest_or_none(settings, connection)}
    if event.action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") and isinstance(event.annotation, dict):
        task = event.annotation.get("task") or (event.task or {}).get("id")
        enqueue_call(connection, "backend.jobs.update_pool_for_task", {**base, "task": task}, queue=settings.interactive_queue, at_front=True)
        queue_review(connection, settings, project, [task])
        return {"status": "queued", "action": event.action}
    if event.action == "ANNOTATIONS_DELETED" and event.annotations:
        ids = [a["id"] for a in event.annotations if "id" in a]
        enqueue_call(connection, "backend.jobs.remove_pool_annotations", {**base, "annotations": ids}, queue=settings.interactive_queue, at_front=True)
        queue_review(connection, settings, project, annotations=ids)
        return {"status": "queued", "action": event.action}
    if event.action == "TASKS_CREATED" and event.tasks:
        if not settings.auto_prelabel:
            return {"status": "ignored", "reason": "SEGGPT_AUTO_PRELABEL is off"}
        ids = [t["id"] for t in event.tasks if "id" in t]
        enqueue_call(connection, "backend.jobs.prelabel_tasks", {**base, "tasks": ids}, queue=settings.interactive_queue)
        return {"status": "queued", "action": event.action, "tasks": len(ids)}
    if event.action == "ANNOTATIONS_CREATED":  # "Create annotations from predictions" in the data manager
        annotations = event.annotation if isinstance(event.annotation, list) else event.annotations or []
        ids = sorted({a["task"] for a in annotations if isinstance(a, dict) and a.get("task") is not None})
        if not ids:
            return {"status": "ignored", "reason": "no annotated task in the event"}
        enqueue_call(connection, "backend.jobs.update_pool_for_tasks", {**base, "tasks": ids}, queue=settings.interactive_queue, at_front=True)
        queue_review(connection, settings, project, ids)
        return {"status": "queued", "action": event.action, "tasks": len(ids)}
    if event.action == "TASKS_DELETED" and event.tasks:
        ids = [t["id"] for t in event.tasks if "id" in t]
        enqueue_call(connection, "backend.jobs.remove_pool_tasks", {**base, "tasks": ids}, queue=settings.interactive_queue, at_front=True)
        return {"status": "queued", "action": event.action, "tasks": len(ids)}
    if event.action == "PROJECT_UPDATED":
        enqueue_call(connection, "backend.jobs.refresh_controls", base, queue=settings.interactive_queue, at_front=True)
        return {"status": "queued", "action": event.action}
    if event.action == "START_TRAINING":
        job = enqueue_prompt_tuning(connection, settings, project, label_config)
        return {"status": "queued", "action": event.action, "job": job.id}
    # PROJECT_CREATED, PROJECT_DELETED, LABEL_LINK_*: nothing for the pool or the controls
    return {"status": "ignored", "action": event.action}
