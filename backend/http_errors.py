"""One mapping from the backend's errors to HTTP answers, installed as FastAPI exception handlers.

Routes raise what went wrong; this table says how it is answered, the same on every route: `{"detail": message}`
with the status below. A body of the wrong shape gets FastAPI's own 422 naming the field (`dependencies.parsed_body`),
a Redis failure 503 naming Redis (`redis_outage`). Label Studio 1.23.2 reads no status but 200: any other
(`raise_for_status`) marks the backend as erroring and drops the detail, so the codes are for people and scripts.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .context_marks import ContextError
from .label_config import LabelConfigError
from .ls_version import LabelStudioTooOld
from .predict_service import LabelConfigConflict, RequestError
from .weights_identity import WeightsUnknown

__all__ = ["ANSWERS", "install_error_answers"]


# FastAPI picks the handler of the nearest class in the exception's MRO; `_answer` looks the status up the same way.
ANSWERS: dict[type[Exception], int] = {
    RequestError: 422,  # a project id that is not one, no label config to predict with, ...
    LabelConfigError: 422,  # a label config this backend cannot predict for (no BrushLabels or PolygonLabels, ...)
    ContextError: 422,  # an interactive mark it cannot read
    LabelConfigConflict: 409,  # a /predict label config that differs from the one /setup saved
    LabelStudioTooOld: 400,  # the caller is a Label Studio older than the oldest this backend works with
    WeightsUnknown: 503,  # no model version can be named yet: the weights are on no machine that answered
}


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    status = next(ANSWERS[kind] for kind in type(exc).__mro__ if kind in ANSWERS)
    return JSONResponse(status_code=status, content={"detail": str(exc)})


def install_error_answers(app: FastAPI) -> None:
    for kind in ANSWERS:
        app.add_exception_handler(kind, _answer)
