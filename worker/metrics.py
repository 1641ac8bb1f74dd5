"""Counters shared by every web process and worker: one Redis hash, without expiry (counters live as long as the
installation; /metrics renders them)."""

from __future__ import annotations

import redis

from .defaults import KEY_PREFIX

__all__ = ["METRICS_KEY", "count", "counters"]

METRICS_KEY = f"{KEY_PREFIX}:metrics"


def count(connection: redis.Redis, name: str, amount: int = 1) -> None:
    if not amount:
        return
    try:
        connection.hincrby(METRICS_KEY, name, amount)
    except redis.RedisError:
        pass  # metrics never break a request or a job


def counters(connection: redis.Redis) -> dict[str, int]:
    return {name.decode(): int(value) for name, value in connection.hgetall(METRICS_KEY).items()}
