"""POST /setup: remember the project's label config, start a prompt-pool sync if due, answer the model version.

Label Studio calls it (3 s timeout) before every prediction request: it must answer at once, so the sync runs
on the control worker.
"""

import logging

from typing import Annotated

from fastapi import APIRouter, Depends

from worker import enqueue_call

from ..control_jobs import SYNC_FUNCTION
from ..dependencies import RedisDep, SettingsDep, require_basic_auth, parsed_body
from ..label_config import parse_label_config
from ..ls_version import LabelStudioTooOld, too_old_reason
from ..keys import pool_sync_due_key
from ..metrics import count
from ..version_log import record_version
from ..predict_service import current_model_version, project_id
from ..prompt_pool import PromptPool
from ..schemas import SetupRequest

router = APIRouter(dependencies=[Depends(require_basic_auth)])
log = logging.getLogger(__name__)
SYNC_EVERY = 300  # seconds between full pool syncs per project; webhooks keep it current in between


def schedule_sync(connection, settings, project: int, label_config: str, force: bool = False) -> bool:
    """Enqueue a full sync of the pool unless one ran recently; needs Label Studio credentials."""
    if not (settings.label_studio_url and settings.label_studio_api_key):
        return False
    key = pool_sync_due_key(project)
    if not force and not connection.set(key, 1, nx=True, ex=SYNC_EVERY):
        return False
    if force:
        connection.set(key, 1, ex=SYNC_EVERY)
    # on the control queue, at its front: a control worker runs it at once, beside the model workers' /predict work
    enqueue_call(connection, SYNC_FUNCTION, {"project": project, "label_config": label_config},
                 queue=settings.control_queue, at_front=True, description=f"sync prompt pool of project {project}")
    return True


@router.post("/setup")
def setup(body: Annotated[SetupRequest, Depends(parsed_body(SetupRequest))], settings: SettingsDep, connection: RedisDep) -> dict:
    project = project_id(body.project)
    controls = parse_label_config(body.schema_)  # errors answer through `http_errors`, as on every route
    too_old = too_old_reason(settings.label_studio_url or (body.hostname or "").rstrip("/"), settings.label_studio_api_key)
    if too_old:
        raise LabelStudioTooOld(too_old)
    pool = PromptPool(connection, project)
    saved = pool.load_controls()
    changed = saved is None or saved[1] != body.schema_
    pool.save_controls(controls, body.schema_)
    schedule_sync(connection, settings, project, body.schema_, force=changed)
    count(connection, "setup_requests")
    version = current_model_version(connection, settings, project)
    record_version(connection, project, version, pool.size())  # Label Studio will ask for it: list it in /versions
    return {"model_version": version}
