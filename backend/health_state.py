"""What /health reports: named reasons why the backend is not UP, each set and cleared by the part that knows.

Every part that can tell the backend is broken (Redis unreachable, a disk full, Label Studio refusing the token,
weights that cannot load) keeps its own named reason here; /health is UP only while none is set. Reading never
blocks on anything but a lock held for a dict copy, so /health can answer from it at once.
"""

from __future__ import annotations

import threading

__all__ = ["HealthState", "HEALTH"]


class HealthState:
    """Named reasons, each a one-line sentence; none set means UP."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    def set(self, name: str, reason: str) -> None:
        with self._lock:
            self._reasons[name] = reason

    def clear(self, name: str) -> None:
        with self._lock:
            self._reasons.pop(name, None)

    def update(self, name: str, reason: str | None) -> None:
        """Set `name` to `reason`, or clear it where `reason` is None."""
        if reason is None:
            self.clear(name)
        else:
            self.set(name, reason)

    def reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(self._reasons)


HEALTH = HealthState()
"""The process's one health state: the web app's /health reads it."""
