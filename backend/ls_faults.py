"""Label Studio rejecting the token (401/403): a configuration fault, said once a minute, seen by /health and status.

Every process that meets the rejection (a worker fetching an image or importing predictions, the CLI, a sync job)
reports it here, in Redis, so the web process can show it without calling Label Studio itself. Nothing is stored
for the tasks it hits: they fail as system faults and the next run retries them.
"""

from __future__ import annotations

import logging
import time

import redis

from .keys import token_rejected_key, token_rejected_logged_key
from .ls_client import LabelStudioAuthError

__all__ = ["LOG_EVERY", "report_token_rejected", "note_label_studio_ok", "token_problem"]

log = logging.getLogger(__name__)

LOG_EVERY = 60  # seconds between two log lines about the same rejected token, across every process
STATE_TTL = 120  # seconds the fault stays shown after its last occurrence, when nothing clears it sooner
_seen_here = 0.0  # when this process last reported a rejection (only such a process clears it on success)
_logged_here = 0.0  # the once-a-minute gate when Redis cannot be asked


def report_token_rejected(connection: redis.Redis | None, error: LabelStudioAuthError) -> None:
    """Remember the rejection for /health and status; log it if no process did in the last minute."""
    global _seen_here, _logged_here
    _seen_here = time.monotonic()
    try:
        if connection is None:
            raise redis.RedisError("no connection")
        with connection.pipeline() as pipe:
            pipe.set(token_rejected_key(), str(error), ex=STATE_TTL)
            pipe.set(token_rejected_logged_key(), 1, nx=True, ex=LOG_EVERY)
            first = bool(pipe.execute()[1])
    except redis.RedisError:
        first = time.monotonic() - _logged_here >= LOG_EVERY
    if first:
        _logged_here = time.monotonic()
        log.error("%s; nothing is stored until it is fixed (said once a minute while it lasts)", error)


def note_label_studio_ok(connection: redis.Redis) -> None:
    """An authenticated call succeeded: if this process had reported a rejection, the token works again."""
    global _seen_here
    if _seen_here:
        _seen_here = 0.0
        try:
            connection.delete(token_rejected_key(), token_rejected_logged_key())
        except redis.RedisError:
            pass


def token_problem(connection: redis.Redis) -> str | None:
    """The rejected-token line if Label Studio rejected the token in the last two minutes, else None."""
    try:
        raw = connection.get(token_rejected_key())
    except redis.RedisError:
        return None  # Redis's own state is told by its own check
    return raw.decode() if raw else None
