"""What the backend adds to a worker process: the Label Studio image source and the Label Studio result sink.

`install()` runs in `seggpt-ls worker` before the first job; the job layer only knows these by name.

The sink hands each prediction to whoever will deliver it, exactly once: while the `/predict` request that asked
for it is still waiting, into that request's result hash; once the request has given up (its budget ran out), to
Label Studio through the API. The switch is one atomic Redis step on each side.
"""

from __future__ import annotations

import json
import logging

import redis

from worker import TransientError, register_sink, register_source

from .label_config import Control
from .ls_client import LabelStudioError
from .ls_format import prediction_for
from .services import services_from_env

__all__ = ["install", "request_keys", "LabelStudioSink"]

log = logging.getLogger(__name__)

# Store the result for the waiting request unless it has closed; 1 if stored, 0 if the caller must deliver it.
_STORE_IF_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], 86400)
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""


def request_keys(request_id: str) -> tuple[str, str]:
    """(closed flag, results hash) of one /predict request."""
    return f"seggpt:predict:{request_id}:closed", f"seggpt:predict:{request_id}:results"


def _label_studio_source(connection: redis.Redis, reference: dict) -> bytes:
    spec = reference["label_studio"]
    return services_from_env().fetcher.fetch(spec["value"], spec.get("task"))


class LabelStudioSink:
    def __init__(self, connection: redis.Redis, payload: dict) -> None:
        self.connection = connection
        self.project = payload["project"]
        self.model_version = payload["model_version"]
        self.controls = [Control(**{**c, "labels": tuple(c["labels"])}) for c in payload["controls"]]
        self.request = payload.get("request")
        self._store_if_open = connection.register_script(_STORE_IF_OPEN)

    def write(self, task: dict, segmentation, done_key: str) -> None:
        task_id = task["id"]
        prediction = prediction_for(task_id, self.controls, segmentation.masks, segmentation.scores, self.model_version)
        if self.request:
            closed, results = request_keys(self.request)
            if self._store_if_open(keys=[closed, results, done_key], args=[str(task_id), json.dumps(prediction)]):
                return
        self._deliver(task_id, prediction)
        self.connection.sadd(done_key, str(task_id))

    def _deliver(self, task_id: int, prediction: dict) -> None:
        """Write through the API unless the task already holds this very prediction (a re-run after a crash)."""
        client = services_from_env().require_client()
        ours = {region["id"] for region in prediction["result"]}
        try:
            for existing in client.predictions(task_id):
                if existing.get("model_version") == self.model_version and {r.get("id") for r in existing.get("result") or []} == ours:
                    return
            client.create_prediction(task_id, prediction)
        except LabelStudioError as exc:
            if exc.transient:
                raise TransientError(str(exc)) from None
            raise


def install() -> None:
    register_source("label_studio", _label_studio_source)
    register_sink("label_studio", LabelStudioSink)
