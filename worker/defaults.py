"""Every tunable constant of the job layer, each with what it is for."""

DEFAULT_QUEUE = "seggpt"
"""Queue that `seggpt-ls worker` listens on and work is enqueued to, unless told otherwise."""

CHUNK_SIZE = 16
"""Tasks per job: large enough to amortise a dequeue, small enough that a lost worker loses little time."""

JOB_TIMEOUT = 3600
"""Seconds a chunk may run before RQ stops it."""

RESULT_TTL = 7 * 24 * 3600
"""Seconds that finished jobs and stored results stay readable."""

FAILURE_TTL = 30 * 24 * 3600
"""Seconds that failed jobs stay visible for `seggpt-ls retry-failed`."""

JOB_RETRIES = 3
"""Times RQ re-queues a chunk whose worker died or whose tasks kept failing transiently."""

BATCH_TARGETS = 4
"""Targets per forward inside a chunk (times K prompt rows each); loading and writing overlap the forward."""

TASK_ATTEMPTS = 4
"""Attempts per task on transient errors (network, 5xx) inside one run of a chunk."""

TASK_BACKOFF = 0.5
"""Seconds before the first retry of a task; doubled at each further attempt."""

HEARTBEAT_INTERVAL = 5
"""Seconds between a busy worker's heartbeats."""

HEARTBEAT_GRACE = 10
"""Seconds past a missed heartbeat before a job counts as abandoned and is re-queued."""

MAINTENANCE_INTERVAL = 15
"""Seconds between a worker's sweeps for abandoned jobs of dead workers."""

PROMPT_CACHE_SIZE = 8
"""Prepared prompt sets a worker keeps on its device, keyed by content."""

PROMPT_CACHE_BYTES = 2 * 2**30
"""Bytes those prepared prompt sets may hold together (images, masks, tensors): large pools of large images
would otherwise grow a worker without bound. `SEGGPT_PROMPT_CACHE_MB` overrides it."""

KEY_PREFIX = "seggpt"
"""Prefix of every Redis key this project writes besides RQ's own."""

WEIGHTS_WAIT = 120.0
"""Seconds a chunk waits for a worker with the weights it expects (by digest) before its tasks fail."""

REDIS_BACKOFF_CAP = 30.0
"""Longest pause, in seconds, between a worker's attempts to reach Redis while it is away."""

PROMPT_SET_TTL = 30 * 24 * 3600
"""Seconds a stored prompt set lives unused; every load renews it."""

STOP_GRACE = 2.0
"""Seconds a stopping worker lets its running chunk reach the next batch before it interrupts it where it is (an
image fetch that hangs, a long forward): the chunk goes back to its queue, what it stored stays."""

YIELD_WAIT = 30.0
"""Seconds a control job queued with `yields_to` (webhook work) waits for those queues (the /predict queue) to hold
nothing queued or running before it starts anyway: below RQ's one minute after which a job taken but not started
counts as lost."""
