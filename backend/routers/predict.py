"""POST /predict: exactly one item per task, in order, within the prediction budget."""

import logging
import time

from typing import Annotated

from fastapi import APIRouter, Depends

from ..dependencies import RedisDep, SettingsDep, require_basic_auth, parsed_body
from ..metrics import count, observe
from ..predict_service import RequestError, predict_interactive, predict_tasks, project_id
from ..schemas import PredictRequest

router = APIRouter(dependencies=[Depends(require_basic_auth)])
log = logging.getLogger(__name__)


@router.post("/predict")
def predict(request: Annotated[PredictRequest, Depends(parsed_body(PredictRequest))], settings: SettingsDep, connection: RedisDep) -> dict:
    project = request.project
    if project is None:
        project = next((t.project for t in request.tasks if t.project is not None), None)
    if project is None:
        raise RequestError("body.project is missing and no task names its project")
    return _predict(request, project, settings, connection)  # errors answer through `http_errors`


def _predict(request: PredictRequest, project, settings, connection) -> dict:
    tasks = [t.model_dump() for t in request.tasks]  # validated; the extra fields Label Studio sends come along
    started = time.perf_counter()
    context = (request.params or {}).get("context")
    if context and (context.get("result") if isinstance(context, dict) else True):
        if len(tasks) != 1:
            raise RequestError(f"an interactive /predict (params.context) is for one task, got {len(tasks)}")
        # a region drawn with a smart tool: find the other instances like it in the open task (results[0] is read)
        results, version = predict_interactive(connection, settings, tasks[0], project, request.label_config, context)
        observe(connection, "interactive_request_seconds", time.perf_counter() - started)
        found = len(results[0]["result"]) if isinstance(results[0], dict) else "no"
        log.info("project %s: interactive /predict for task %s: %s region(s) in %.2f s, model version %s", project_id(project),
                 tasks[0].get("id"), found, time.perf_counter() - started, version)
        return {"results": results, "model_version": version}
    results, version = predict_tasks(connection, settings, tasks, project, request.label_config)
    observe(connection, "predict_request_seconds", time.perf_counter() - started)
    count(connection, "predict_requests")
    count(connection, "predict_tasks", len(tasks))
    count(connection, "predict_tasks_answered", sum(1 for r in results if isinstance(r, dict) and r["result"]))
    count(connection, "predict_tasks_deferred", sum(1 for r in results if isinstance(r, list)))
    log.info("project %s: /predict %d task(s), model version %s", project_id(project), len(tasks), version)
    return {"results": results, "model_version": version}
