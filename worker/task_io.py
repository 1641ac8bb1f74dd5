"""Where a task's image comes from and where its result goes, by name.

Sources resolve a task's `image` reference to bytes; sinks store a result and mark the task done in the same
Redis transaction, so a chunk that is re-run after a crash skips exactly the tasks already stored.
Built in: sources `path` (a local file) and `blob` (bytes in Redis), and the `redis` sink. Others come from worker
plugins: functions registered under the `seggpt_ls.worker_plugins` entry point group, called once when a worker
runtime is built (`load_plugins`), or on the first unknown name however the worker was started. The job layer
never imports the packages that provide them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import redis

from .codec import mask_to_b64png
from .defaults import RESULT_TTL
from .errors import ChunkLost, PluginMissing, TaskInputError
from .keys import blob_key, results_key, write_log_key
from .payloads import SinkSpec

__all__ = ["Sink", "register_source", "register_sink", "load_image_bytes", "make_sink", "results_key", "store_blob", "load_plugins"]

Source = Callable[[redis.Redis, dict], bytes]
SinkFactory = Callable[[redis.Redis, Mapping[str, Any]], "Sink"]


class Sink(Protocol):
    """Stores results. May also define `flush()`, called once at the end of each chunk (bulk writers)."""

    def write(self, task: dict, segmentation: Any, done_key: str) -> None:
        """Store the result of `task` and add its id to the set `done_key` (atomically, or at `flush`)."""


_sources: dict[str, Source] = {}
_sinks: dict[str, SinkFactory] = {}


PLUGIN_GROUP = "seggpt_ls.worker_plugins"
_plugins_loaded = False


def load_plugins() -> list[str]:
    """Call every installed worker plugin once per process; returns their names."""
    global _plugins_loaded
    from importlib.metadata import entry_points

    names = []
    if not _plugins_loaded:
        _plugins_loaded = True
        for point in entry_points(group=PLUGIN_GROUP):
            point.load()()
            names.append(point.name)
    return names


def register_source(kind: str, source: Source) -> None:
    _sources[kind] = source


def register_sink(name: str, factory: SinkFactory) -> None:
    _sinks[name] = factory


def load_image_bytes(connection: redis.Redis, reference: dict) -> bytes:
    """The bytes of a task image. `reference` has one key naming its source, e.g. {"path": "/data/a.jpg"}."""
    if not isinstance(reference, dict) or len(reference) != 1:
        raise TaskInputError(f"image reference {reference!r} must be an object with exactly one source key")
    kind, value = next(iter(reference.items()))
    if kind not in _sources:
        load_plugins()
    source = _sources.get(kind)
    if source is None:
        raise PluginMissing(f"unknown image source {kind!r}; known: {', '.join(sorted(_sources))}")
    return source(connection, {kind: value})


def make_sink(connection: redis.Redis, spec: SinkSpec, namespace: str) -> Sink:
    """The sink `spec` names, given its params and the chunk's namespace (under `"namespace"`)."""
    if spec.name not in _sinks:
        load_plugins()
    factory = _sinks.get(spec.name)
    if factory is None:
        raise PluginMissing(f"unknown result sink {spec.name!r}; known: {', '.join(sorted(_sinks))} (are the worker's plugins installed?)")
    return factory(connection, {"namespace": namespace, **spec.params})


def store_blob(connection: redis.Redis, data: bytes, ttl: int = RESULT_TTL) -> dict:
    """Put image bytes in Redis for workers on other machines; returns the task's image reference."""
    import hashlib

    key = blob_key(hashlib.sha256(data).hexdigest())
    connection.set(key, data, ex=ttl)
    return {"blob": key}


def _path_source(connection: redis.Redis, reference: dict) -> bytes:
    path = Path(reference["path"])
    try:
        return path.read_bytes()
    except FileNotFoundError:
        from seggpt_core import ImageError

        raise ImageError(f"{path}: no such file") from None
    except ValueError as exc:  # a path with a NUL byte: the task's own input
        from seggpt_core import ImageError

        raise ImageError(f"{str(path)[:80]!r}: not a usable path ({exc})") from None


def _blob_source(connection: redis.Redis, reference: dict) -> bytes:
    data = connection.get(reference["blob"])
    if data is None:
        from seggpt_core import ImageError

        raise ImageError(f"image blob {reference['blob']} is not in Redis (expired, or never stored)")
    return data


class RedisSink:
    """Results as JSON in the hash `results_key(namespace)`; with `write_log`, every write also logged in order.

    With `owner_guard` (the chunk's owner key and this run's id, set by the job), each write is one transaction
    that holds only while this run still owns the chunk: a run frozen between its ownership check and its write (a
    paused or partitioned worker, thawed after another took the chunk over) writes nothing."""

    owner_guard: tuple[str, str] | None = None

    def __init__(self, connection: redis.Redis, params: Mapping[str, Any]) -> None:
        self.connection = connection
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


register_source("path", _path_source)
register_source("blob", _blob_source)
register_sink("redis", RedisSink)
