"""What a job is given: the worker process's connection, model runtime, image sources, result sinks and services.

A worker process builds one `JobContext` when it starts and hands it to every job it runs, as the job function's
second argument (`f(payload, context)`): RQ calls the function through `ContextJob`, the job class the worker
uses. Nothing inside a job looks state up in module globals, so a test calls a job function directly with a
context it built.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import redis
from rq.job import Job

from .errors import PluginMissing, TaskInputError
from .task_io import BUILTIN_SINKS, BUILTIN_SOURCES, Sink, SinkFactory, Source

if TYPE_CHECKING:
    from .payloads import SinkSpec
    from .runtime import WorkerRuntime

__all__ = ["JobContext", "ContextJob", "NoModelHere"]


class NoModelHere(RuntimeError):
    """A job that needs the model ran in a control worker, which has none."""


@dataclass(frozen=True)
class JobContext:
    """The state a job may use, built once per worker process (and in tests, by the test)."""

    connection: redis.Redis
    runtime: WorkerRuntime | None = None  # the loaded model; None in a control worker
    sources: Mapping[str, Source] = field(default_factory=lambda: dict(BUILTIN_SOURCES))
    sinks: Mapping[str, SinkFactory] = field(default_factory=lambda: dict(BUILTIN_SINKS))
    # The Label Studio services (`backend.services.Services`): the job layer never looks inside them.
    services: Any = None
    job: Job | None = None  # the RQ job being run: its id and its meta (progress); set per job by the worker

    def for_job(self, job: Job) -> "JobContext":
        return dataclasses.replace(self, job=job)

    def require_runtime(self) -> WorkerRuntime:
        if self.runtime is None:
            raise NoModelHere("this job needs the model, and a control worker has none: it belongs on a model queue")
        return self.runtime

    def load_image_bytes(self, reference: dict) -> bytes:
        """The bytes of a task image. `reference` has one key naming its source, e.g. {"path": "/data/a.jpg"}."""
        if not isinstance(reference, dict) or len(reference) != 1:
            raise TaskInputError(f"image reference {reference!r} must be an object with exactly one source key")
        kind, value = next(iter(reference.items()))
        source = self.sources.get(kind)
        if source is None:
            raise PluginMissing(f"unknown image source {kind!r}; this worker knows: {', '.join(sorted(self.sources))}")
        return source(self, {kind: value})

    def make_sink(self, spec: SinkSpec, namespace: str) -> Sink:
        """The sink `spec` names, given its params and the chunk's namespace (under `"namespace"`)."""
        factory = self.sinks.get(spec.name)
        if factory is None:
            raise PluginMissing(f"unknown result sink {spec.name!r}; this worker knows: {', '.join(sorted(self.sinks))}")
        return factory(self, {"namespace": namespace, **spec.params})


class ContextJob(Job):
    """An RQ job whose function is called as `f(*args, context)`, with the context its worker set on it."""

    context: JobContext | None = None

    def _execute(self) -> Any:
        if self.context is None:
            raise RuntimeError(f"job {self.id}: run by a worker that gave it no context (start it with `seggpt-ls worker`)")
        result = self.func(*self.args, self.context, **self.kwargs)
        if asyncio.iscoroutine(result):
            return asyncio.run(result)
        return result
