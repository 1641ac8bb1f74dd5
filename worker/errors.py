"""Exceptions of the job layer."""

__all__ = ["DataDirUnusable", "QueueUnavailable", "TransientError", "ChunkIncomplete", "ChunkInterrupted", "ChunkLost", "WeightsMismatch",
           "TaskInputError", "SystemFault", "PluginMissing", "NotInRedis", "PROGRAMMING_ERRORS"]

# A job that raises one of these has a bug, not a fault of its input or of the system: it fails once, loudly, with
# its traceback; it is never retried, nor recorded task by task. The project's own errors never derive from them.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (AttributeError, KeyError, IndexError, NameError, TypeError, AssertionError)


class QueueUnavailable(RuntimeError):
    """Redis cannot be reached or started."""


class DataDirUnusable(QueueUnavailable):
    """The data directory (`MODEL_DIR`), where the embedded Redis keeps its files, cannot be written."""


class TransientError(RuntimeError):
    """A failure worth retrying: a network error, a timeout, a 5xx answer."""


class ChunkIncomplete(RuntimeError):
    """Some tasks of a chunk kept failing transiently; RQ re-queues the chunk and done tasks are skipped."""


class ChunkInterrupted(RuntimeError):
    """The worker was asked to stop mid-chunk; the chunk goes back to its queue (no retry used) and the tasks it
    already stored are skipped when it runs again."""


class ChunkLost(RuntimeError):
    """The chunk was taken over by another worker while this one could not heartbeat (a partition, a pause): this
    run writes nothing more for it, and records no result."""


class WeightsMismatch(RuntimeError):
    """A chunk expects other weights than this worker has loaded; it is left for a matching worker."""


class TaskInputError(ValueError):
    """A task that fails because of its own input (its image cannot be fetched or used), not because of the
    system: its empty result is final. Every other failure leaves the task without a result, to be retried."""


class SystemFault(RuntimeError):
    """The system cannot do this task now, and retrying at once will not help: a rejected credential, a service
    that kept failing past its deadline. The task fails without a result (a later run retries it) and without
    retries inside the chunk; whoever raised it has already logged why, once, so it is not logged per task."""


class PluginMissing(LookupError):
    """An image source or result sink that no installed worker plugin provides (a worker started without the
    package that registers it): its tasks fail without a result, and a worker that has it can do them later."""


class NotInRedis(LookupError):
    """Something a job needs is not (or no longer) in Redis: a prompt set, a learned prompt, a pool mask (expired,
    or never stored). The job fails, and can run again once it is stored again (`seggpt-ls retry-failed`)."""
