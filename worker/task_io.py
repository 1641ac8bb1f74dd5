"""Where a task's image comes from and where its result goes, by name.

Sources resolve a task's `image` reference to bytes; sinks store a result and mark the task done in the same
Redis transaction, so a chunk that is re-run after a crash skips exactly the tasks already stored.
Built in: sources `path` (a local file) and `blob` (bytes in Redis), and the `redis` sink. A job finds them, and
any others, in its `JobContext`: the process that starts a worker adds its own (the backend's Label Studio source
and sink), so the job layer never imports the packages that provide them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import redis

from seggpt_core.errors import ImageError

from .codec import mask_to_b64png
from .defaults import RESULT_TTL
from .errors import ChunkLost, PluginMissing, TaskInputError
from .keys import blob_key, results_key, write_log_key

if TYPE_CHECKING:
    from .context import JobContext

__all__ = ["Sink", "Source", "SinkFactory", "BUILTIN_SOURCES", "BUILTIN_SINKS", "RedisSink", "results_key", "store_blob"]

Source = Callable[["JobContext", dict], bytes]
SinkFactory = Callable[["JobContext", Mapping[str, Any]], "Sink"]


class Sink(Protocol):
    """Stores results. May also define `flush()`, called once at the end of each chunk (bulk writers), and an
    `overlapped` attribute, which the job sets to True when writes run in threads beside the forward: a bulk
    writer may then write each result as it comes, its wait hidden behind the next forward. `writers`: how many
    threads may call `write` at once when overlapped (default 1)."""

    def write(self, task: dict, segmentation: Any, done_key: str) -> None:
        """Store the result of `task` and add its id to the set `done_key` (atomically, or at `flush`)."""


def store_blob(connection: redis.Redis, data: bytes, ttl: int = RESULT_TTL) -> dict:
    """Put image bytes in Redis for workers on other machines; returns the task's image reference."""
    key = blob_key(hashlib.sha256(data).hexdigest())
    connection.set(key, data, ex=ttl)
    return {"blob": key}


def _path_source(context: JobContext, reference: dict) -> bytes:
    path = Path(reference["path"])
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except ValueError as exc:  # a path with a NUL byte: the task's own input
        raise ImageError(f"{str(path)[:80]!r}: not a usable path ({exc})") from None


def _blob_source(context: JobContext, reference: dict) -> bytes:
    data = context.connection.get(reference["blob"])
    if data is None:
        raise ImageError(f"image blob {reference['blob']} is not in Redis (expired, or never stored)")
    return data


class RedisSink:
    """Results as JSON in the hash `results_key(namespace)`; with `write_log`, every write also logged in order.

    With `owner_guard` (the chunk's owner key and this run's id, set by the job), each write is one transaction
    that holds only while this run still owns the chunk: a run frozen between its ownership check and its write (a
    paused or partitioned worker, thawed after another took the chunk over) writes nothing."""

    owner_guard: tuple[str, str] | None = None

    def __init__(self, context: JobContext, params: Mapping[str, Any]) -> None:
        self.connection = context.connection
        self.namespace = params.get("namespace") or "default"
        self.write_log = bool(params.get("write_log"))

    def write(self, task: dict, segmentation: Any, done_key: str) -> None:
        task_id = str(task["id"])
        document = {
            "height": segmentation.size[0],
            "width": segmentation.size[1],
            "labels": {
                label: {"score": segmentation.scores[label], "mask": mask_to_b64png(mask)}
                for label, mask in segmentation.masks.items()
            },
            "finished_at": time.time(),
        }

        def store(pipe) -> None:
            if self.owner_guard is not None:
                key, execution = self.owner_guard
                owner = pipe.get(key)  # watched: a takeover from now on aborts the transaction
                if owner is not None and owner.decode() != execution:
                    raise ChunkLost(f"task {task_id}: the chunk was taken over by another worker: not written here")
                pipe.multi()
            pipe.hset(results_key(self.namespace), task_id, json.dumps(document))
            if self.write_log:
                pipe.rpush(write_log_key(self.namespace), task_id)
                pipe.expire(write_log_key(self.namespace), RESULT_TTL)
            pipe.sadd(done_key, task_id)
            pipe.expire(results_key(self.namespace), RESULT_TTL)
            pipe.expire(done_key, RESULT_TTL)

        if self.owner_guard is not None:
            self.connection.transaction(store, self.owner_guard[0])
        else:
            with self.connection.pipeline(transaction=True) as pipe:
                store(pipe)
                pipe.execute()


# read-only: a worker's own set is a copy in its JobContext, never a registry that code adds to at run time
BUILTIN_SOURCES: Mapping[str, Source] = MappingProxyType({"path": _path_source, "blob": _blob_source})
BUILTIN_SINKS: Mapping[str, SinkFactory] = MappingProxyType({"redis": RedisSink})
