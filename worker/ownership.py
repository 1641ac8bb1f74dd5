"""Who holds a chunk now: one execution (one worker's run of it) at a time.

A worker that stops heartbeating (its machine lost the network, or paused) has its chunk re-queued; another worker
runs it. If the first one comes back, it still holds the chunk in memory: a zombie. Each run claims the chunk as it
starts (the latest claim wins), and every write of a run (a prediction, the chunk's bookkeeping, its heartbeat,
its result) first checks that the claim is still its own: a zombie's writes are refused with `ChunkLost`.
"""

from __future__ import annotations

import redis

from .defaults import RESULT_TTL
from .errors import ChunkLost
from .keys import chunk_owner_key

__all__ = ["claim", "holds", "owned_by", "taken_over", "ensure_held", "save_meta_if_held"]


def claim(connection: redis.Redis, job_id: str, execution_id: str) -> None:
    """This execution holds the chunk from now on (a re-run after a takeover claims it from the earlier run)."""
    connection.set(chunk_owner_key(job_id), execution_id, ex=RESULT_TTL)


def holds(connection: redis.Redis, job_id: str, execution_id: str | None) -> bool:
    """Whether `execution_id` still holds the chunk (an execution that never claimed one holds whatever it runs)."""
    if execution_id is None:
        return True
    return owned_by(connection.get(chunk_owner_key(job_id)), execution_id)


def owned_by(owner: bytes | None, execution_id: str | None) -> bool:
    """Whether a chunk whose owner key holds `owner` is `execution_id`'s."""
    return execution_id is None or owner is None or owner.decode() == execution_id


def taken_over(job_id: str) -> ChunkLost:
    return ChunkLost(f"job {job_id} was taken over by another worker after this one missed its heartbeats: "
                     "nothing more is written for it here")


def ensure_held(connection: redis.Redis, job_id: str, execution_id: str | None) -> None:
    if not holds(connection, job_id, execution_id):
        raise taken_over(job_id)


# The owner check and the write in one atomic step and one round trip (a WATCH transaction takes three: a chunk
# saves its progress once a second while it runs, and a worker host's Redis is across a network).
_SAVE_META_IF_HELD = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'meta', ARGV[2])
return 1
"""


def save_meta_if_held(job, execution_id: str | None, meta: bytes | None = None) -> None:
    """`job.save_meta()` (or the serialized `meta`), done only while `execution_id` owns the chunk: a run frozen
    before saving its progress (a pause, a partition) never overwrites what the run that took the chunk over saved."""
    meta = job._serialize_meta() if meta is None else meta
    if execution_id is None:
        job.connection.hset(job.key, "meta", meta)
        return
    if not job.connection.eval(_SAVE_META_IF_HELD, 2, chunk_owner_key(job.id), job.key, execution_id, meta):
        raise taken_over(job.id)
