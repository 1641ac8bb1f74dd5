"""What SEGGPT_DTYPE=auto means, fixed once per weights, so that one model version never holds two dtypes' masks.

"auto" is each device's default: bf16 on CUDA, fp32 on the CPU. A job queued with dtype "auto" (the backend's
default) has "auto" in its model version, and a bf16 GPU worker and an fp32 CPU worker would both take it: the same
version, different masks. So the first worker to run an "auto" job for some weights records the dtype it runs, and
every later "auto" job for those weights runs only on workers of that dtype (the others leave it, as they leave a
job for other weights). A fleet of one kind never notices; a mixed fleet is told to set SEGGPT_DTYPE.
"""

from __future__ import annotations

import redis

from .keys import AUTO_DTYPE_TTL, auto_dtype_key

__all__ = ["required_dtype"]


def required_dtype(connection: redis.Redis, expected: str | None, weights_digest: str | None, mine: str) -> str | None:
    """The dtype a job queued with dtype `expected` must run in, for a worker with the weights `weights_digest` that
    runs `mine`: `expected` itself unless it is "auto"; for "auto", the dtype recorded for those weights, which this
    worker records (and renews) when none is, or when it is its own. None: any dtype will do."""
    if expected != "auto":
        return expected
    if weights_digest is None or mine == "auto":  # nothing to record by (no digest, or the model not loaded yet)
        return None
    key = auto_dtype_key(weights_digest)
    with connection.pipeline() as pipe:
        pipe.set(key, mine, nx=True, ex=AUTO_DTYPE_TTL)
        pipe.get(key)
        _, recorded = pipe.execute()
    recorded = recorded.decode() if recorded is not None else mine
    if recorded == mine:
        connection.expire(key, AUTO_DTYPE_TTL)
    return recorded
