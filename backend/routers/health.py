"""GET /health and GET /: liveness, answered without touching the model or the queue."""

from fastapi import APIRouter

router = APIRouter()


@router.get("/health")
@router.get("/")
def health() -> dict:
    return {"status": "UP", "model_class": "SegGPT", "model_dir": None}
