"""POST /train: Label Studio's legacy training call (`{"annotations", "project", "label_config"}`), sent where the
webhook flow is switched off. It starts the same prompt-tuning job as the START_TRAINING webhook."""

from typing import Annotated

from fastapi import APIRouter, Depends

from ..dependencies import RedisDep, SettingsDep, require_basic_auth, parsed_body
from ..metrics import count
from ..predict_service import project_id
from ..prompt_training import enqueue_prompt_tuning
from ..schemas import TrainRequest

router = APIRouter(dependencies=[Depends(require_basic_auth)])


@router.post("/train")
def train(body: Annotated[TrainRequest, Depends(parsed_body(TrainRequest))], settings: SettingsDep, connection: RedisDep) -> dict:
    project = project_id(body.project)  # errors answer through `http_errors`
    count(connection, "train_requests")
    job_id, queued = enqueue_prompt_tuning(connection, settings, project, body.label_config, coalesce=True)
    return {"status": "queued" if queued else "coalesced", "job": job_id}
