"""GET /health and GET /: liveness, answered without touching the model or the queue.

Not UP while something stops every prediction; each such check adds its one-line reason."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..weights_identity import weights_problem

router = APIRouter()


@router.get("/health")
@router.get("/")
def health(request: Request):
    settings = request.app.state.settings
    reasons = [reason for reason in (weights_problem(settings, getattr(request.app.state, "redis", None)),) if reason]
    if reasons:
        return JSONResponse(status_code=503, content={"status": "DOWN", "model_class": "SegGPT", "model_dir": None,
                                                      "reason": "; ".join(reasons)})
    return {"status": "UP", "model_class": "SegGPT", "model_dir": None}
