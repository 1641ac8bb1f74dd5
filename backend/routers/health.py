"""GET /health and GET /: UP, or DOWN (503) with the reasons that the parts of the backend hold (see
`health_state`); answered without touching the model or the queue.

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
    reasons = HEALTH.reasons()
    body = {"status": "DOWN" if reasons else "UP", "model_class": "SegGPT", "model_dir": None}
    if reasons:
        body["reasons"] = reasons
    return JSONResponse(body, status_code=503 if reasons else 200)
