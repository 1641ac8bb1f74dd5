"""What /health reports: named reasons why the backend is not UP, each set and cleared by the part that knows.

Every part that can tell the backend is broken (Redis unreachable, a disk full, Label Studio refusing the token,
weights that cannot load) keeps its own named reason here; /health is UP only while none is set. Reading never
blocks on anything but a lock held for a dict copy, so /health can answer from it at once.
"""

from __future__ import annotations

import threading

__all__ = ["HealthState", "HEALTH"]


class HealthState:
    """Named reasons, each a one-line sentence; none set means UP. A reason is "down" (the backend cannot predict:
    /health answers 503) or "degraded" (it answers, but stores nothing while the fault lasts, e.g. Label Studio
    rejecting the token: /health stays 200 so that Label Studio keeps the model connected, and says DEGRADED)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}
        self._degraded: set[str] = set()

    def set(self, name: str, reason: str, *, degraded: bool = False) -> None:
        with self._lock:
            self._reasons[name] = reason
            (self._degraded.add if degraded else self._degraded.discard)(name)

    def clear(self, name: str) -> None:
        with self._lock:
            self._reasons.pop(name, None)
            self._degraded.discard(name)

    def update(self, name: str, reason: str | None, *, degraded: bool = False) -> None:
        """Set `name` to `reason`, or clear it where `reason` is None."""
        if reason is None:
            self.clear(name)
        else:
            self.set(name, reason, degraded=degraded)

    def reasons(self) -> dict[str, str]:
        """The "down" reasons."""
        with self._lock:
            return {name: reason for name, reason in self._reasons.items() if name not in self._degraded}

    def problems(self) -> list[str]:
        """The "degraded" reasons."""
        with self._lock:
            return [reason for name, reason in self._reasons.items() if name in self._degraded]


HEALTH = HealthState()
"""The process's one health state: the web app's /health reads it."""
