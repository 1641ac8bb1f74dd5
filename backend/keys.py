"""Redis keys the backend's processes share (web processes, workers, CLI)."""

__all__ = ["request_keys", "inflight_key", "current_version_key"]


def request_keys(request_id: str) -> tuple[str, str]:
    """(closed flag, results hash) of one /predict request."""
    return f"seggpt:predict:{request_id}:closed", f"seggpt:predict:{request_id}:results"


def inflight_key(project: int, version: str) -> str:
    """Hash task id -> job id of the tasks queued for `version` of `project`."""
    return f"seggpt:inflight:{project}:{version}"


def current_version_key(project: int) -> str:
    """The model version bulk work of a project is for; older bulk work is dropped before it is written."""
    return f"seggpt:project:{project}:version"
