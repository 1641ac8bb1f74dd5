"""GET /health and GET /: UP; DOWN (503) with the reasons that stop predictions; or DEGRADED (200) with the
problems that make predictions store nothing while they last (see `health_state`). Answered without touching the
model or the queue.

An async route: it runs on the event loop, never on the request thread pool that blocking /predict calls fill
(46 of them in flight made a sync /health wait 23.7 s). It only reads in-memory state (the parts that know set it).
"""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..health_state import HEALTH

router = APIRouter()


@router.get("/health")
@router.get("/")
async def health() -> JSONResponse:
    reasons, problems = HEALTH.reasons(), HEALTH.problems()
    body = {"status": "DOWN" if reasons else "DEGRADED" if problems else "UP", "model_class": "SegGPT", "model_dir": None}
    if reasons:
        body["reasons"] = reasons
        body["reason"] = "; ".join(reasons.values())
    if problems:
        body["problems"] = problems
    return JSONResponse(body, status_code=503 if reasons else 200)
