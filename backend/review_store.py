"""Review records and the prompts each prediction was made from, in Redis (keys and lifetimes: `keys.review_key`,
`keys.prompts_used_key`). A project keeps at most `max_records` records, one per task (its newest annotation);
the oldest go first."""

from __future__ import annotations

import json
import time
from typing import Mapping, Sequence

import redis

from .keys import REVIEW_TTL, prompts_used_key, review_keys, review_projects_key

__all__ = ["record_prompts_used", "prompts_used", "save_record", "remove_record", "load_records", "clear_records", "save_summary",
           "load_summary", "reviewed_projects"]


def record_prompts_used(connection: redis.Redis, project: int, version: str, task_id: object, sources: Sequence,
                        indices: Mapping[str, Sequence[int]]) -> None:
    """Note which pool entries (annotation ids) each label of the task's prediction of `version` came from."""
    used = {label: sorted({sources[i] for i in chosen if 0 <= i < len(sources)}) for label, chosen in indices.items()}
    key = prompts_used_key(project, version)
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.hset(key, str(task_id), json.dumps(used, sort_keys=True))
            pipe.expire(key, REVIEW_TTL)
            pipe.execute()
    except redis.RedisError:
        pass  # a prediction is never lost for its bookkeeping; its review record just names no prompt


def prompts_used(connection: redis.Redis, project: int, version: str, task_id: object) -> dict[str, list]:
    raw = connection.hget(prompts_used_key(project, version), str(task_id))
    return json.loads(raw) if raw else {}


def save_record(connection: redis.Redis, project: int, record: dict, max_records: int) -> None:
    keys = review_keys(project)
    task = str(record["task"])
    with connection.pipeline(transaction=True) as pipe:
        pipe.hset(keys.records, task, json.dumps(record, sort_keys=True, separators=(",", ":")))
        pipe.zadd(keys.order, {task: time.time()})
        pipe.expire(keys.records, REVIEW_TTL)
        pipe.expire(keys.order, REVIEW_TTL)
        pipe.sadd(review_projects_key(), int(project))
        pipe.execute()
    extra = connection.zcard(keys.order) - max_records
    if extra > 0:
        oldest = [m.decode() for m, _ in connection.zpopmin(keys.order, extra)]
        if oldest:
            connection.hdel(keys.records, *oldest)


def remove_record(connection: redis.Redis, project: int, task_id: object) -> None:
    """The task has no annotation any more: its record goes."""
    keys = review_keys(project)
    connection.hdel(keys.records, str(task_id))
    connection.zrem(keys.order, str(task_id))


def load_records(connection: redis.Redis, project: int) -> list[dict]:
    """The project's records, by task id."""
    records = [json.loads(v) for v in connection.hvals(review_keys(project).records)]
    return sorted(records, key=lambda r: r["task"])


def clear_records(connection: redis.Redis, project: int) -> None:
    keys = review_keys(project)
    connection.delete(keys.records, keys.order, keys.summary)


def save_summary(connection: redis.Redis, project: int, summary: dict) -> None:
    connection.set(review_keys(project).summary, json.dumps(summary, sort_keys=True), ex=REVIEW_TTL)


def load_summary(connection: redis.Redis, project: int) -> dict | None:
    raw = connection.get(review_keys(project).summary)
    return json.loads(raw) if raw else None


def reviewed_projects(connection: redis.Redis) -> list[int]:
    return sorted(int(p) for p in connection.smembers(review_projects_key()))

