"""Every Redis key the job layer writes besides RQ's own, with how long it lives. Spelled here and nowhere else."""

from __future__ import annotations

from .defaults import HEARTBEAT_GRACE, JOB_TIMEOUT, KEY_PREFIX

__all__ = ["RUN_CANCELLED_TTL", "WORKER_INFO_GRACE", "AUTO_DTYPE_TTL", "worker_info_key", "auto_dtype_key", "counters_key", "chunk_done_key", "chunk_owner_key", "run_cancelled_key", "histogram_key", "results_key", "write_log_key", "blob_key", "prompt_set_key", "learned_prompt_key"]


RUN_CANCELLED_TTL = JOB_TIMEOUT + 24 * 3600
"""Seconds a run's cancelled flag lives: no chunk of the run can still be running after that."""

WORKER_INFO_GRACE = HEARTBEAT_GRACE
"""Seconds a worker's info outlives its heartbeat interval: it is gone soon after the worker."""

AUTO_DTYPE_TTL = 7 * 24 * 3600
"""Seconds what SEGGPT_DTYPE=auto means for some weights is kept after the last job that relied on it."""


def worker_info_key(name: str) -> str:
    """JSON `payloads.WorkerInfo`: a live worker's pid, device, weights and digest. TTL: heartbeat interval +
    WORKER_INFO_GRACE (gone with it)."""
    return f"{KEY_PREFIX}:worker:{name}"


def auto_dtype_key(weights_digest: str) -> str:
    """String: the dtype jobs queued with dtype "auto" run in, for the weights `weights_digest` (see `auto_dtype`).
    TTL: AUTO_DTYPE_TTL, renewed by each such job."""
    return f"{KEY_PREFIX}:auto-dtype:{weights_digest}"


def chunk_done_key(job_id: str) -> str:
    """Set of the task ids a chunk has stored, so a re-run skips them. TTL: RESULT_TTL."""
    return f"{KEY_PREFIX}:chunk:{job_id}:done"


def chunk_owner_key(job_id: str) -> str:
    """String: the execution (one worker's run) that holds a chunk now; see `ownership`. TTL: RESULT_TTL."""
    return f"{KEY_PREFIX}:chunk:{job_id}:owner"


def run_cancelled_key(run: str) -> str:
    """Flag: the run was cancelled; its chunks stop at their next batch. TTL: JOB_TIMEOUT + a day (no chunk of the
    run can still be running after that)."""
    return f"{KEY_PREFIX}:run:{run}:cancelled"


def counters_key() -> str:
    """Hash: counter name -> count (see `metrics`). No TTL: counters."""
    return f"{KEY_PREFIX}:metrics"


def histogram_key(name: str) -> str:
    """Hash: a latency histogram (bucket -> count, plus sum and count). No TTL: counters."""
    return f"{KEY_PREFIX}:metrics:{name}"


def results_key(namespace: str) -> str:
    """Hash task id -> JSON result, of the `redis` sink. TTL: RESULT_TTL."""
    return f"{KEY_PREFIX}:results:{namespace}"


def write_log_key(namespace: str) -> str:
    """List of task ids in the order the `redis` sink wrote them, only when its params ask for `"write_log"` (an
    exactly-once audit, for tests and benchmarks). TTL: RESULT_TTL."""
    return f"{KEY_PREFIX}:results:{namespace}:writes"


def blob_key(sha256: str) -> str:
    """Image bytes for workers on other machines, by content. TTL: RESULT_TTL."""
    return f"{KEY_PREFIX}:blob:{sha256}"


def prompt_set_key(digest: str) -> str:
    """JSON prompt set, by content digest. TTL: PROMPT_SET_TTL, renewed at every load."""
    return f"{KEY_PREFIX}:prompts:{digest}"


def learned_prompt_key(digest: str) -> str:
    """A tuned prompt, by content digest. No TTL: a project's model version names it until it is tuned again."""
    return f"{KEY_PREFIX}:learned:{digest}"
