"""The Label Studio ML backend web app. It never loads a model: inference runs on the workers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from worker import get_connection

from .redis_outage import RedisWatch, install_redis_errors
from .routers import health, metrics, predict, setup, train, versions, webhook
from .request_guard import RequestGuard
from .settings import Settings
from .weights_identity import WeightsUnknown

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The app; `on_shutdown` runs when the server shuts down (it stops what `serve` started)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.redis = get_connection(settings.redis_url, settings.data_dir)
        watch = RedisWatch(app.state.redis, settings=settings).start()  # /health: Redis, the token, the weights
        import label_studio_sdk.label_interface  # noqa: F401  (warm: the first /setup must not pay 0.5 s of imports)
        logging.getLogger(__name__).info(
            "seggpt-ls backend: Label Studio %s, weights %s, K=%d, budget %.0f s",
            settings.label_studio_url or "(not set)", settings.weights, settings.num_prompts, settings.predict_budget,
        )
        try:
            yield
        finally:
            watch.stop()
            app.state.redis.close()
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(title="seggpt-ls", lifespan=lifespan)
    app.state.settings = settings

    @app.exception_handler(WeightsUnknown)
    async def weights_unknown(request: Request, exc: WeightsUnknown) -> JSONResponse:
        # no version can be named yet (a web process without the weights, before any worker reports them):
        # say so, rather than predict under a version that may not describe the weights
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    install_redis_errors(app)  # a request that Redis failed: 503 naming Redis, never a bare 500
    for module in (health, setup, predict, train, webhook, metrics, versions):
        app.include_router(module.router)
    # auth from the headers and the body's size before anything is parsed; /docs and /openapi.json are behind it too
    app.add_middleware(RequestGuard, settings=settings)
    return app
