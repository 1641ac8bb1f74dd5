"""GET /health and GET /: liveness, answered without touching the model or the queue.

An async route: it runs on the event loop, never on the request thread pool that blocking /predict calls fill
(46 of them in flight made a sync /health wait 23.7 s). Whatever it reports must be in-memory state that it reads
without waiting (a background check writes it).
"""

from fastapi import APIRouter

router = APIRouter()


@router.get("/health")
@router.get("/")
async def health() -> dict:
    return {"status": "UP", "model_class": "SegGPT", "model_dir": None}
