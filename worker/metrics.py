"""Counters shared by every web process and worker: one Redis hash, without expiry (counters live as long as the
installation; /metrics renders them)."""

from __future__ import annotations

from typing import Iterable

import redis

from .keys import counters_key, histogram_key

__all__ = ["METRICS_KEY", "SECONDS_BUCKETS", "HISTOGRAMS", "count", "counters", "observe", "observe_all", "histogram"]

# Upper bounds (seconds) of the latency histograms: from a GPU batch to a large model on a CPU.
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

METRICS_KEY = counters_key()


def count(connection: redis.Redis, name: str, amount: int = 1) -> None:
    if not amount:
        return
    try:
        connection.hincrby(METRICS_KEY, name, amount)
    except redis.RedisError:
        pass  # metrics never break a request or a job


def counters(connection: redis.Redis) -> dict[str, int]:
    return {name.decode(): int(value) for name, value in connection.hgetall(METRICS_KEY).items()}


HISTOGRAMS = {
    "task_seconds": "seconds per task in a worker (a batch's forward and writes, shared by its tasks)",
    "predict_request_seconds": "seconds a /predict request took to answer",
    "interactive_request_seconds": "seconds an interactive /predict request (a click or a box in the open task) took to answer",
}


def observe(connection: redis.Redis, name: str, seconds: float, times: int = 1) -> None:
    """Count `times` observations of `seconds` in the histogram `name` (one of HISTOGRAMS)."""
    observe_all(connection, name, [(seconds, times)])


def observe_all(connection: redis.Redis, name: str, observations: Iterable[tuple[float, int]]) -> None:
    """`observe` for each (seconds, times), in one round trip."""
    try:
        with connection.pipeline(transaction=False) as pipe:
            for seconds, times in observations:
                pipe.hincrby(histogram_key(name), next((str(b) for b in SECONDS_BUCKETS if seconds <= b), "+Inf"), times)
                pipe.hincrbyfloat(histogram_key(name), "sum", seconds * times)
            pipe.execute()
    except redis.RedisError:
        pass  # metrics never break a request or a job


def histogram(connection: redis.Redis, name: str) -> tuple[list[tuple[str, float]], float]:
    """(cumulative buckets, as Prometheus wants them, ending with +Inf; sum of seconds)."""
    raw = {k.decode(): float(v) for k, v in connection.hgetall(histogram_key(name)).items()}
    buckets, running = [], 0.0
    for bound in [*map(str, SECONDS_BUCKETS), "+Inf"]:
        running += raw.get(bound, 0.0)
        buckets.append((bound, running))
    return buckets, raw.get("sum", 0.0)
