"""The `JobContext` of a worker process the backend starts: the job layer's own sources and sinks, the Label Studio
source and sink, and the Label Studio services, built once from the worker's settings."""

from __future__ import annotations

import redis

from worker import JobContext
from worker.runtime import WorkerRuntime
from worker.task_io import BUILTIN_SINKS, BUILTIN_SOURCES

from .label_studio_io import SINKS, SOURCES
from .services import build_services
from .settings import Settings

__all__ = ["build_job_context"]


def build_job_context(connection: redis.Redis, settings: Settings, runtime: WorkerRuntime | None = None) -> JobContext:
    """The context every job of one worker process gets; `runtime` None: a control worker (no model)."""
    return JobContext(connection, runtime, {**BUILTIN_SOURCES, **SOURCES}, {**BUILTIN_SINKS, **SINKS}, build_services(settings))
