"""POST /webhook: Label Studio project events. Answered at once (Label Studio waits 1 s); work is queued.

Label Studio sends webhooks without credentials, so this route does not require Basic auth (unless
SEGGPT_WEBHOOK_SECRET is set, see `request_guard`): a body is only a hint of where to look. The ids it names are
noted per project and one job per project and kind re-reads Label Studio for them (`webhook_hints`); events for a
project this backend was never set up for are ignored. START_TRAINING, which Label Studio sends through its ML
client with the backend's Basic auth, needs those credentials when they are configured.
"""

import logging

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request

from ..dependencies import RedisDep, SettingsDep, basic_auth_ok, webhook_auth_ok, parsed_body
from ..metrics import count
from ..prompt_pool import PromptPool
from ..prompt_training import enqueue_prompt_tuning
from ..review_jobs import queue_review
from ..schemas import WebhookEvent
from ..weights_identity import WeightsUnknown, backend_digest
from ..webhook_hints import CONTROLS, POOL_FUNCTION, PRELABEL_FUNCTION, note_hints, schedule_hint_job

router = APIRouter()
log = logging.getLogger(__name__)

# Label Studio 1.23.2's webhook actions (webhooks.models.WebhookAction) and START_TRAINING. Each is counted under its
# own fixed metric name; any other action under webhook_other (a name from a body once made /metrics unparsable).
KNOWN_ACTIONS = frozenset({
    "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED", "TASKS_CREATED", "TASKS_DELETED", "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED",
    "LABEL_LINK_DELETED", "START_TRAINING",
})
METRIC_NAMES = {action: f"webhook_{action.lower()}" for action in KNOWN_ACTIONS} | {None: "webhook_other"}


def _digest_or_none(settings, connection) -> str | None:
    """The jobs a webhook queues predict under this process's weights digest; None lets them work it out."""
    try:
        return backend_digest(settings, connection)
    except WeightsUnknown:
        return None


def _ids(items) -> list[int]:
    """The integer ids among `items` (dicts); anything else in a hint is ignored."""
    if isinstance(items, dict):
        items = [items]
    return [item["id"] for item in items or [] if isinstance(item, dict) and type(item.get("id")) is int]


def _task_refs(items) -> list[int]:
    if isinstance(items, dict):
        items = [items]
    return [item["task"] for item in items or [] if isinstance(item, dict) and type(item.get("task")) is int]


@router.post("/webhook")
def webhook(event: Annotated[WebhookEvent, Depends(parsed_body(WebhookEvent))], request: Request, settings: SettingsDep, connection: RedisDep) -> dict:
    action = event.action if event.action in KNOWN_ACTIONS else None
    count(connection, METRIC_NAMES[action])
    if action is None:
        return {"status": "ignored", "reason": "not a Label Studio action"}
    if event.project is None:
        return {"status": "ignored", "reason": "no project in the event"}
    project = event.project.id
    pool = PromptPool(connection, project)
    if pool.load_controls() is None:
        # Label Studio calls /setup when the model is connected, before any event: a project that never came through
        # it is not this backend's (a forged id such as 999 used to leave jobs failing three times each)
        return {"status": "ignored", "reason": f"project {project} is not set up with this backend"}
    base = {"weights_digest": _digest_or_none(settings, connection)}

    def pool_job(task_ids=(), full=None) -> dict:
        note_hints(connection, project, "pool", task_ids, full)
        job_id, queued = schedule_hint_job(connection, settings, project, "pool", POOL_FUNCTION, base,
                                           f"re-read project {project} from Label Studio (webhook hints)")
        return {"status": "queued" if queued else "coalesced", "action": action, "job": job_id}

    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        tasks = _task_refs(event.annotation) or _ids(event.task)
        queue_review(connection, settings, project, tasks[:1])
        return pool_job(tasks[:1]) if tasks else {"status": "ignored", "reason": "no task in the event"}
    if action == "ANNOTATIONS_CREATED":  # "Create annotations from predictions" in the data manager
        # no review: "Create annotations from predictions" copies predictions unread, it is not a reviewer's verdict
        tasks = _task_refs(event.annotation) + _task_refs(event.annotations)
        return {**pool_job(tasks), "tasks": len(set(tasks))} if tasks else {"status": "ignored", "reason": "no annotated task in the event"}
    if action in ("ANNOTATIONS_DELETED", "TASKS_DELETED"):
        # only tasks holding prompts can matter; each is re-read, and leaves the pool only if Label Studio says so
        named = set(_ids(event.annotations)) if action == "ANNOTATIONS_DELETED" else set(_ids(event.tasks))
        if action == "ANNOTATIONS_DELETED":
            queue_review(connection, settings, project, annotations=named)
        field = "annotation" if action == "ANNOTATIONS_DELETED" else "task"
        tasks = sorted({e["task"] for e in pool.entries() if e[field] in named})
        return {**pool_job(tasks), "tasks": len(tasks)} if tasks else {"status": "ignored", "reason": "no prompt of the project is concerned"}
    if action == "PROJECT_UPDATED":
        return pool_job(full=CONTROLS)
    if action == "TASKS_CREATED":
        if not settings.auto_prelabel:
            return {"status": "ignored", "reason": "SEGGPT_AUTO_PRELABEL is off"}
        tasks = _ids(event.tasks)
        if not tasks:
            return {"status": "ignored", "reason": "no task in the event"}
        note_hints(connection, project, "prelabel", tasks)
        job_id, queued = schedule_hint_job(connection, settings, project, "prelabel", PRELABEL_FUNCTION, base,
                                           f"pre-label imported tasks of project {project}")
        return {"status": "queued" if queued else "coalesced", "action": action, "tasks": len(set(tasks)), "job": job_id}
    if action == "START_TRAINING":
        if settings.basic_auth_user and not (basic_auth_ok(settings, request.headers.get("authorization"))
                                             or (settings.webhook_secret and webhook_auth_ok(settings, request.headers))):
            raise HTTPException(401, "START_TRAINING needs the Basic auth credentials (Label Studio sends them with it)",
                                headers={"WWW-Authenticate": 'Basic realm="seggpt-ls"'})
        job_id, queued = enqueue_prompt_tuning(connection, settings, project, event.project.label_config, coalesce=True)
        return {"status": "queued" if queued else "coalesced", "action": action, "job": job_id}
    # PROJECT_CREATED, PROJECT_DELETED, LABEL_LINK_*: nothing for the pool or the controls
    return {"status": "ignored", "action": action}
