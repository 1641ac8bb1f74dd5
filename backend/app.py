"""The Label Studio ML backend web app. It never loads a model (nor torch): inference runs on the workers.

`label_config` imports Label Studio's LabelInterface at its top, so the first /setup pays no imports.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI

from worker import get_connection

from .http_errors import install_error_answers
from .redis_outage import RedisWatch, install_redis_errors
from .routers import health, metrics, predict, setup, train, versions, webhook
from .request_guard import RequestGuard
from .settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The app; `on_shutdown` runs when the server shuts down (it stops what `serve` started)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.redis = get_connection(settings.redis_url, settings.data_dir)
        watch = RedisWatch(app.state.redis, settings=settings).start()  # /health: Redis, the token, the weights
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

    install_error_answers(app)  # one mapping of the backend's errors to HTTP answers, the same on every route
    install_redis_errors(app)  # a request that Redis failed: 503 naming Redis, never a bare 500
    for module in (health, setup, predict, train, webhook, metrics, versions):
        app.include_router(module.router)
    # auth from the headers and the body's size before anything is parsed; /docs and /openapi.json are behind it too
    app.add_middleware(RequestGuard, settings=settings)
    return app
