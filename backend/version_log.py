"""The model versions this backend has produced, for Label Studio's `GET /versions` (newest first)."""

from __future__ import annotations

import json
import time

import redis

from .keys import VERSION_TTL, version_info_key, versions_key

__all__ = ["record_version", "list_versions"]


def record_version(connection: redis.Redis, project: int, version: str, prompts: int) -> None:
    """Remember `version` of `project` (first made now, with `prompts` prompts); later calls keep the first time."""
    info = json.dumps({"version": version, "project": project, "created_at": time.time(), "prompts": prompts})
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.set(version_info_key(version), info, nx=True, ex=VERSION_TTL)
            pipe.expire(version_info_key(version), VERSION_TTL)
            for key in (versions_key(project), versions_key()):
                pipe.zadd(key, {version: time.time()}, nx=True)
                pipe.expire(key, VERSION_TTL)
            pipe.execute()
    except redis.RedisError:
        pass  # the list of versions never fails a prediction


def list_versions(connection: redis.Redis, project: int | None = None, limit: int = 100) -> list[dict]:
    """Newest first: version, project, created_at (epoch seconds), prompts."""
    names = [v.decode() for v in connection.zrevrange(versions_key(project), 0, limit - 1)]
    infos = connection.mget([version_info_key(v) for v in names]) if names else []
    return [json.loads(raw) for raw in infos if raw is not None]
