"""Job functions the tests enqueue to look inside a worker process: light on purpose (nothing imported here)."""

from __future__ import annotations

import sys
import time


def loaded_top_modules(payload: dict, context) -> list[str]:
    """The top-level packages this worker process has imported."""
    return sorted({name.split(".", 1)[0] for name in sys.modules})


def started_at(payload: dict, context) -> float:
    return time.time()


def sleep_then_stamp(payload: dict, context) -> int:
    """Holds its worker for `seconds`, then marks `key` in Redis: a control job long enough to kill its worker in."""
    time.sleep(float(payload["seconds"]))
    return context.connection.incr(payload["key"])
