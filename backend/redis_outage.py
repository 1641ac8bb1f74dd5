"""How the web app lives through a Redis outage: a watch that keeps /health's "redis" reason true, and one mapping
of every Redis failure of a request to a 503 that names Redis (never a bare 500)."""

from __future__ import annotations

import logging
import threading

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from worker import QueueUnavailable

from .health_state import HEALTH, HealthState
from .ls_faults import token_problem
from .settings import Settings
from .weights_identity import weights_problem

__all__ = ["RedisWatch", "install_redis_errors", "REASON"]

log = logging.getLogger(__name__)
REASON = "redis"
TOKEN_REASON = "label_studio_token"
WEIGHTS_REASON = "weights"
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)
# Redis answers these when it cannot write (a full disk) or is not yet able to: an outage, not a bug.
_OUTAGE_REPLIES = ("MISCONF", "LOADING", "READONLY", "MASTERDOWN")


def _where(connection: redis.Redis) -> str:
    kwargs = connection.connection_pool.connection_kwargs
    return f"unix://{kwargs['path']}" if kwargs.get("path") else f"{kwargs.get('host')}:{kwargs.get('port')}"  # never the password


class RedisWatch:
    """Looks at Redis every `interval` seconds from a thread of its own (with short timeouts) and keeps the
    health state's "redis" reason: set while Redis is unreachable or cannot write to its disk."""

    def __init__(self, connection: redis.Redis, health: HealthState = HEALTH, interval: float = 1.0,
                 settings: Settings | None = None) -> None:
        pool = connection.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        self.client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
        self.where = _where(connection)
        self.health = health
        self.settings = settings
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def problem(self) -> str | None:
        """What is wrong with Redis now, in one line; None when it answers and can write."""
        try:
            info = self.client.info("persistence")
        except _UNREACHABLE as exc:
            return f"Redis at {self.where} is unreachable: {exc}"
        except redis.RedisError as exc:
            return f"Redis at {self.where} refuses: {exc}"
        failing = {key: info.get(key) for key in ("aof_last_write_status", "rdb_last_bgsave_status") if info.get(key) == "err"}
        if failing:
            return f"Redis at {self.where} cannot write to its disk ({', '.join(f'{k}: err' for k in failing)})"
        return None

    def _check(self, previous: str | None) -> str | None:
        """One look at Redis, the token and the weights; returns the Redis problem (None when it is fine)."""
        problem = self.problem()
        if problem != previous:
            if problem:
                log.warning("%s", problem)
            elif previous is not None:
                log.warning("Redis at %s answers again", self.where)
            self.health.update(REASON, problem)
        # Label Studio rejecting the token, as the workers and jobs report it in Redis
        self.health.update(TOKEN_REASON, None if problem else token_problem(self.client), degraded=True)
        if self.settings is not None:  # no worker can load the configured weights: nothing can be predicted
            self.health.update(WEIGHTS_REASON, None if problem else weights_problem(self.settings, self.client))
        return problem

    def _run(self, previous: str | None) -> None:
        while not self._stop.wait(self.interval):
            previous = self._check(previous)

    def start(self) -> "RedisWatch":
        """The first look happens here, so /health is right from the first request; then once per interval."""
        self._thread = threading.Thread(target=self._run, args=(self._check(None),), name="seggpt-redis-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.health.clear(REASON)
        self.health.clear(TOKEN_REASON)
        self.health.clear(WEIGHTS_REASON)
        self.client.close()


def _outage_answer(what: str) -> JSONResponse:
    others = [reason for name, reason in HEALTH.reasons().items() if name != REASON]
    detail = f"Redis is unavailable ({what}): nothing was done; retry once /health is UP"
    if others:
        detail += " (" + "; ".join(others) + ")"
    return JSONResponse(status_code=503, content={"detail": detail}, headers={"Retry-After": "5"})


def install_redis_errors(app: FastAPI) -> None:
    """Answer a request that Redis failed with 503 naming Redis."""

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    @app.exception_handler(QueueUnavailable)
    async def unreachable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: Redis is unavailable: %s", request.method, request.url.path, exc)
        return _outage_answer(str(exc) or type(exc).__name__)

    @app.exception_handler(redis.ResponseError)
    async def refused(request: Request, exc: redis.ResponseError) -> JSONResponse:
        if str(exc).startswith(_OUTAGE_REPLIES):
            log.warning("%s %s: Redis refuses: %s", request.method, request.url.path, exc)
            return _outage_answer(str(exc))
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "Internal Server Error"})
