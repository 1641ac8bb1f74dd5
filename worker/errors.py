"""Exceptions of the job layer."""

__all__ = ["QueueUnavailable", "TransientError", "ChunkIncomplete"]


class QueueUnavailable(RuntimeError):
    """Redis cannot be reached or started."""


class TransientError(RuntimeError):
    """A failure worth retrying: a network error, a timeout, a 5xx answer."""


class ChunkIncomplete(RuntimeError):
    """Some tasks of a chunk kept failing transiently; RQ re-queues the chunk and done tasks are skipped."""
