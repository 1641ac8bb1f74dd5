"""Misconfigurations found at start: one line that names the setting and the fix, and an exit code per kind.

The codes follow sysexits.h, so that a service manager can tell them apart (the README lists them).
"""

from __future__ import annotations

import logging
import sys
import traceback

import redis

from worker.errors import DataDirUnusable, QueueUnavailable

from ..settings import SettingError

__all__ = ["EXIT_SETTING", "EXIT_REDIS", "EXIT_MODEL_DIR", "EXIT_IN_USE", "StartupError", "startup_failure", "report"]

EXIT_SETTING = 78  # EX_CONFIG: a setting has a bad value
EXIT_REDIS = 69  # EX_UNAVAILABLE: Redis unreachable, or refusing the password
EXIT_MODEL_DIR = 73  # EX_CANTCREAT: MODEL_DIR cannot be written
EXIT_IN_USE = 75  # EX_TEMPFAIL: MODEL_DIR's embedded Redis is run by another live serve


class StartupError(Exception):
    """A misconfiguration: `message` is the one line shown, `code` the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def startup_failure(exc: BaseException) -> StartupError | None:
    """The one-line report of `exc` where it is a known misconfiguration; None for anything else."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, SettingError):
        return StartupError(str(exc), EXIT_SETTING)
    if isinstance(exc, DataDirUnusable):
        return StartupError(str(exc), EXIT_MODEL_DIR)
    if isinstance(exc, (QueueUnavailable, redis.ConnectionError)):
        return StartupError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, EXIT_REDIS)
    return None


def report(exc: BaseException) -> int | None:
    """Print `exc` in one line on stderr (with its traceback at LOG_LEVEL=DEBUG) and return its exit code; None
    where it is not a misconfiguration (the caller lets it propagate)."""
    failure = startup_failure(exc)
    if failure is None:
        return None
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {failure}", file=sys.stderr)
    return failure.code
