"""Which weights this backend's predictions come from, by content digest (the model version is derived from it).

In order: `SEGGPT_WEIGHTS_DIGEST` when set; the digest of the weights `SEGGPT_WEIGHTS` names, where this machine
holds them (shipped, a local path, the hub cache); else the one digest that the live workers serving that name
report. Jobs carry it, and a worker with other weights leaves them alone.
"""

from __future__ import annotations

import json
import logging

import redis
from rq import Worker

from seggpt_core.errors import WeightsError
from seggpt_core.weights_digest import weights_digest
from seggpt_core.weights_files import OFFLINE_CHOICES
from worker.keys import worker_info_key
from worker.payloads import PayloadError, WorkerInfo

from .settings import Settings

__all__ = ["backend_digest", "weights_problem", "WeightsUnknown"]

log = logging.getLogger(__name__)
_local: dict[str, str] = {}


class WeightsUnknown(RuntimeError):
    """The backend cannot tell which weights its predictions would come from."""


def _announced(connection: redis.Redis, weights: str) -> set[str]:
    """The digests live workers serving `weights` report: one lookup per registered worker, not a keyspace scan
    (this runs on every /predict of a web process without the weights)."""
    names = [worker.name for worker in Worker.all(connection=connection)]
    infos = [_worker_info(raw) for raw in connection.mget([worker_info_key(n) for n in names]) if raw] if names else []
    return {info.weights_digest for info in infos if info is not None and info.weights == weights and info.weights_digest}


def _worker_info(raw: bytes) -> WorkerInfo | None:
    try:
        return WorkerInfo.from_json(json.loads(raw))
    except (ValueError, PayloadError):
        return None  # a worker this process cannot read says nothing about the weights


def backend_digest(settings: Settings, connection: redis.Redis | None = None) -> str:
    if settings.weights_digest:
        return settings.weights_digest
    if settings.weights not in _local:
        try:
            _local[settings.weights] = weights_digest(settings.weights)
        except WeightsError as exc:
            if connection is None:
                raise WeightsUnknown(f"SEGGPT_WEIGHTS={settings.weights}: {_one_line(exc)}; set SEGGPT_WEIGHTS_DIGEST, or run where the weights are") from None
            announced = _announced(connection, settings.weights)
            if len(announced) == 1:
                return announced.pop()  # not remembered: workers may be replaced by others
            detail = f"live workers report {len(announced)} different digests" if announced else "no live worker reports them"
            raise WeightsUnknown(f"cannot load the weights SEGGPT_WEIGHTS={settings.weights}: not on this machine and {detail} "
                                 f"(a hub id needs the Hugging Face hub); {OFFLINE_CHOICES}; or set SEGGPT_WEIGHTS_DIGEST "
                                 "where the workers have them") from None
    return _local[settings.weights]


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def weights_problem(settings: Settings, connection: redis.Redis | None) -> str | None:
    """Why no worker can load the configured weights, in one line (for /health); None while this machine holds
    them or a live worker reports them. Redis being out of reach is another reason, reported by its own check."""
    try:
        backend_digest(settings, connection)
    except WeightsUnknown as exc:
        return str(exc)
    except redis.RedisError:
        return None
    return None
