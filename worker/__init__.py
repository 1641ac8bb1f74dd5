"""The job layer: Redis/RQ queue, job functions and the GPU worker process. Imports seggpt_core, never backend."""

from .connection import EmbeddedRedis, data_dir, get_connection
from .errors import ChunkIncomplete, ChunkInterrupted, ChunkLost, QueueUnavailable, SystemFault, TaskInputError, TransientError, WeightsMismatch
from .prompt_sets import PromptRecord, PromptRef, load_learned_prompt, load_prompt_set, store_learned_prompt, store_prompt_refs, store_prompt_set
from .queue import (
    cancel_run,
    chunked,
    enqueue_call,
    enqueue_noop,
    enqueue_segmentation,
    fetch_job,
    get_queue,
    input_failures,
    job_failures,
    queue_status,
    retry_failed,
)
from .context import JobContext
from .task_io import results_key, store_blob
from .waiting import job_progress

__all__ = [
    "ChunkIncomplete",
    "ChunkInterrupted",
    "ChunkLost",
    "TaskInputError",
    "SystemFault",
    "WeightsMismatch",
    "input_failures",
    "EmbeddedRedis",
    "JobContext",
    "PromptRecord",
    "PromptRef",
    "QueueUnavailable",
    "TransientError",
    "cancel_run",
    "chunked",
    "enqueue_call",
    "data_dir",
    "enqueue_noop",
    "enqueue_segmentation",
    "fetch_job",
    "get_connection",
    "get_queue",
    "job_failures",
    "job_progress",
    "load_learned_prompt",
    "load_prompt_set",
    "queue_status",
    "results_key",
    "retry_failed",
    "store_blob",
    "store_learned_prompt",
    "store_prompt_refs",
    "store_prompt_set",
]
