"""GET /health and GET /: liveness, answered without touching the model or the queue.

What is wrong but does not stop the server from answering is a problem: each check in `CHECKS` takes the app and
returns one line, or None. Any line turns "status" into "DEGRADED" and is listed under "problems"; Label Studio
reads only the HTTP status (200), so it keeps calling /predict, which stores nothing while the problem lasts.
"""

from typing import Callable

from fastapi import APIRouter, FastAPI, Request

from ..ls_faults import token_problem

router = APIRouter()


def label_studio_token(app: FastAPI) -> str | None:
    """Label Studio answered 401/403 to a worker, a sync or the CLI in the last two minutes."""
    connection = getattr(app.state, "redis", None)
    return token_problem(connection) if connection is not None else None


CHECKS: list[Callable[[FastAPI], str | None]] = [label_studio_token]


@router.get("/health")
@router.get("/")
def health(request: Request) -> dict:
    problems = [line for check in CHECKS if (line := check(request.app))]
    body = {"status": "DEGRADED" if problems else "UP", "model_class": "SegGPT", "model_dir": None}
    if problems:
        body["problems"] = problems
    return body
