"""Job functions the tests enqueue to look inside a worker process: light on purpose (nothing imported here)."""

from __future__ import annotations

import sys
import time


def loaded_top_modules(payload: dict, context) -> list[str]:
    """The top-level packages this worker process has imported."""
    return sorted({name.split(".", 1)[0] for name in sys.modules})


def started_at(payload: dict, context) -> float:
    return time.time()
