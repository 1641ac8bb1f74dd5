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

__all__ = ["claim", "holds", "ensure_held", "save_meta_if_held"]


def claim(connection: redis.Redis, job_id: str, execution_id: str) -> None:
    """This execution holds the chunk from now on (a re-run after a takeover claims it from the earlier run)."""
    connection.set(chunk_owner_key(job_id), execution_id, ex=RESULT_TTL)


def holds(connection: redis.Redis, job_id: str, execution_id: str | None) -> bool:
    """Whether `execution_id` still holds the chunk (an execution that never claimed one holds whatever it runs)."""
    if execution_id is None:
        return True
    owner = connection.get(chunk_owner_key(job_id))
    return owner is None or owner.decode() == execution_id


def ensure_held(connection: redis.Redis, job_id: str, execution_id: str | None) -> None:
    if not holds(connection, job_id, execution_id):
        raise ChunkLost(f"job {job_id} was taken over by another worker after this one missed its heartbeats: "
                        "nothing more is written for it here")


def save_meta_if_held(job, execution_id: str | None) -> None:
    """`job.save_meta()` as one transaction that holds only while `execution_id` owns the chunk: a run frozen before
    saving its progress (a pause, a partition) never overwrites what the run that took the chunk over saved."""
    if execution_id is None:
        job.save_meta()
        return
    meta = job._serialize_meta()

    def store(pipe) -> None:
        owner = pipe.get(chunk_owner_key(job.id))  # watched: a takeover from now on aborts the transaction
        if owner is not None and owner.decode() != execution_id:
            raise ChunkLost(f"job {job.id} was taken over by another worker after this one missed its heartbeats: "
                            "nothing more is written for it here")
        pipe.multi()
        pipe.hset(job.key, "meta", meta)

    job.connection.transaction(store, chunk_owner_key(job.id))
