"""Counters shared by every web process and worker (a Redis hash), exposed in Prometheus text format."""

from __future__ import annotations

import redis

__all__ = ["count", "render"]

KEY = "seggpt:metrics"


def count(connection: redis.Redis, name: str, amount: int = 1) -> None:
    try:
        connection.hincrby(KEY, name, amount)
    except redis.RedisError:
        pass  # metrics never break a request


def render(connection: redis.Redis, gauges: dict[str, float]) -> str:
    lines = []
    for raw_name, value in sorted(connection.hgetall(KEY).items()):
        name = raw_name.decode()
        lines += [f"# TYPE seggpt_{name}_total counter", f"seggpt_{name}_total {int(value)}"]
    for name, value in sorted(gauges.items()):
        lines += [f"# TYPE seggpt_{name} gauge", f"seggpt_{name} {value}"]
    return "\n".join(lines) + "\n"
