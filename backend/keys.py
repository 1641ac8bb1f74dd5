"""Every Redis key the backend writes (web processes, workers, CLI), with how long it lives. Spelled here and
nowhere else; the job layer's own keys are in `worker.keys`, the counters in `worker.metrics`."""

from typing import NamedTuple

from worker.defaults import KEY_PREFIX

__all__ = ["REQUEST_TTL", "INFLIGHT_TTL", "SHOWN_VERSION_TTL", "BOOTSTRAP_BATCH_TTL", "VERSION_TTL", "POOL_BLOB_TTL", "POOL_SYNC_FAILED_TTL",
           "request_keys", "inflight_key", "import_attempts_key", "current_version_key", "shown_version_key", "versions_key", "version_info_key", "bootstrap_batch_key",
           "pool_key", "PoolKeys", "pool_keys", "pool_sync_due_key", "hint_keys", "pool_sync_failed_key", "token_rejected_key", "token_rejected_logged_key",
           "REVIEW_TTL", "review_key", "ReviewKeys", "review_keys", "review_projects_key", "prompts_used_key"]


DAY = 24 * 3600

REQUEST_TTL = DAY
"""Seconds a /predict request's closed flag and results hash live."""

INFLIGHT_TTL = 30 * DAY
"""Seconds the record of which tasks are queued for a version lives (renewed by every bootstrap that adds to it)."""

SHOWN_VERSION_TTL = 30 * DAY
"""Seconds the flag that a version was made the project's shown one lives."""

BOOTSTRAP_BATCH_TTL = 30 * DAY
"""Seconds a project's latest bootstrap stays readable by `seggpt-ls status --project`."""

VERSION_TTL = 365 * DAY
"""Seconds a model version's record lives, renewed whenever the version is produced again."""

POOL_BLOB_TTL = 365 * DAY
"""Seconds the pool's images and masks (blobs, see `worker.keys.blob_key`) live: as long as their entries are likely
to (the entries themselves have no TTL)."""

POOL_SYNC_FAILED_TTL = DAY
"""Seconds the reason of a failed pool sync is kept (the next sync that succeeds deletes it)."""


def request_keys(request_id: str) -> tuple[str, str]:
    """(closed flag, results hash) of one /predict request. TTL: REQUEST_TTL (set by whoever writes first)."""
    return f"{KEY_PREFIX}:predict:{request_id}:closed", f"{KEY_PREFIX}:predict:{request_id}:results"


def inflight_key(project: int, version: str) -> str:
    """Hash task id -> job id of the tasks queued for `version` of `project`. TTL: INFLIGHT_TTL."""
    return f"{KEY_PREFIX}:inflight:{project}:{version}"


def import_attempts_key(project: int, version: str) -> str:
    """Set of the task ids whose predictions of `version` a worker has started to import into `project`: only these
    can already be in Label Studio, so only these are checked before an import. TTL: RESULT_TTL (7 days)."""
    return f"{KEY_PREFIX}:imports:{project}:{version}"


def current_version_key(project: int) -> str:
    """The model version bulk work of a project is for; older bulk work is dropped before it is written.
    No TTL: one small string per project, the project's state."""
    return f"{KEY_PREFIX}:project:{project}:version"


def shown_version_key(project: int, version: str) -> str:
    """Flag: `version` was made the project's shown model version in Label Studio. TTL: SHOWN_VERSION_TTL."""
    return f"{KEY_PREFIX}:project:{project}:shown:{version}"


def versions_key(project: int | None = None) -> str:
    """Sorted set: the model versions this backend produced (for `project`, or for every project), scored by when
    each was first made. TTL: VERSION_TTL, renewed whenever a version is produced."""
    return f"{KEY_PREFIX}:versions" if project is None else f"{KEY_PREFIX}:project:{project}:versions"


def version_info_key(version: str) -> str:
    """JSON: a version's project, when it was made and how many prompts it used. TTL: VERSION_TTL."""
    return f"{KEY_PREFIX}:version:{version}"


def bootstrap_batch_key(project: int) -> str:
    """JSON of the project's latest bootstrap (`seggpt-ls status --project`). TTL: BOOTSTRAP_BATCH_TTL."""
    return f"{KEY_PREFIX}:bootstrap:{project}"


def pool_key(project: int) -> str:
    """Prefix of the project's prompt pool: the entries hash and its companions (see `prompt_pool`; `:excluded` is
    the set of annotation ids `seggpt-ls prompts --exclude` left out of the prompts). No TTL: the pool is the
    project's annotations, kept until they are deleted or the pool is rebuilt."""
    return f"{KEY_PREFIX}:pool:{project}"


class PoolKeys(NamedTuple):
    """The keys of one project's prompt pool (owner: `backend.prompt_pool`). No TTL, like the pool."""

    entries: str  # hash entry id -> JSON entry
    generation: str  # counter, raised at every change: the cached version is stale once it differs
    version: str  # "<generation>:<digest>" of the entries, cached
    excluded: str  # set of the annotation ids left out of the prompts
    learned: str  # hash image field -> digest of its learned (tuned) prompt
    config: str  # JSON: the saved label config and its controls


def pool_keys(project: int) -> PoolKeys:
    base = pool_key(project)
    return PoolKeys(base, *(f"{base}:{part}" for part in ("generation", "version", "excluded", "learned", "config")))


def pool_sync_due_key(project: int) -> str:
    """Flag: the pool was rebuilt from Label Studio recently, so /setup does not do it again. TTL: set by /setup."""
    return f"{pool_key(project)}:sync-due"


def hint_keys(project: int, kind: str) -> tuple[str, str, str]:
    """(pending flag, hinted task ids, full-pass flag) of one kind of webhook work ("pool", "prelabel", "tune") for
    `project`. The pending flag holds the queued job's id while it waits (TTL one hour, so that a lost job never
    blocks the kind for good); the job clears it when it starts. The other two live until that job takes them."""
    base = f"{KEY_PREFIX}:hints:{project}:{kind}"
    return f"{base}:pending", f"{base}:tasks", f"{base}:full"


def pool_sync_failed_key(project: int) -> str:
    """Why the project's last pool sync failed (one line), so /predict says it instead of "no prompts yet".
    Deleted by the next sync that succeeds. TTL: POOL_SYNC_FAILED_TTL."""
    return f"{pool_key(project)}:sync-failed"


def token_rejected_key() -> str:
    """Label Studio's last 401/403 (one line), shown by /health and `seggpt-ls status`. TTL: 2 minutes, renewed by
    every rejection; deleted by the next success of a process that saw one."""
    return f"{KEY_PREFIX}:ls:token-rejected"


def token_rejected_logged_key() -> str:
    """Flag: a process logged the rejected token in the last minute, so no other does. TTL: 60 s."""
    return f"{KEY_PREFIX}:ls:token-rejected:logged"


# Review records live half a year after their project's last review (renewed on every write).
REVIEW_TTL = 180 * 24 * 3600


def review_key(project: int) -> str:
    """Prefix of a project's review records (owner: `backend.review_store`): `:records` (hash task id -> JSON record
    of its newest annotation against the prediction it was made from), `:order` (sorted set task id -> when written,
    to keep at most SEGGPT_REVIEW_MAX_RECORDS) and `:summary` (JSON: per-label numbers and calibrated thresholds,
    for /metrics and SEGGPT_AUTO_THRESHOLDS). TTL: REVIEW_TTL, renewed on every write."""
    return f"{KEY_PREFIX}:review:{project}"


class ReviewKeys(NamedTuple):
    """The keys of one project's review records (see `review_key`). TTL: REVIEW_TTL, renewed on every write."""

    records: str
    order: str
    summary: str


def review_keys(project: int) -> ReviewKeys:
    base = review_key(project)
    return ReviewKeys(f"{base}:records", f"{base}:order", f"{base}:summary")


def review_projects_key() -> str:
    """Set of the projects that have review records (/metrics reads their summaries). No TTL: a few ids."""
    return f"{KEY_PREFIX}:review-projects"


def prompts_used_key(project: int, version: str) -> str:
    """Hash task id -> JSON {label: [annotation ids of the pool entries it was predicted from]}, for predictions of
    `version` (written by the Label Studio sink; read by review records). TTL: REVIEW_TTL."""
    return f"{KEY_PREFIX}:prompts-used:{project}:{version}"
