"""What the backend adds to a worker process: the Label Studio image source and the Label Studio result sink.

`SOURCES` and `SINKS` go into the `JobContext` of every worker the backend starts (`job_context`); the job layer
knows them only by name. Both reach Label Studio through the context's services, built once per worker process.
`label_studio_sink()` is the one place that writes the sink's params; `LabelStudioSinkParams` the one that reads them.

The sink hands each prediction to whoever will deliver it, exactly once: while the `/predict` request that asked
for it is still waiting, into that request's result hash; once the request has given up (its budget ran out), to
Label Studio through the API. The switch is one atomic Redis step on each side.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from worker import JobContext, TransientError
from worker.defaults import RESULT_TTL
from worker.payloads import PayloadError, SinkSpec

from .keys import REQUEST_TTL, SHOWN_VERSION_TTL, current_version_key, import_attempts_key, inflight_key, request_keys, shown_version_key
from .label_config import Control
from .ls_client import LabelStudioAuthError, LabelStudioError
from .ls_faults import note_label_studio_ok, report_token_rejected
from .ls_format import prediction_for
from .region_filter import RegionFilter
from .review_store import record_prompts_used
from .services import Services

__all__ = ["SOURCES", "SINKS", "LabelStudioSink", "LabelStudioSinkParams", "label_studio_sink"]

log = logging.getLogger(__name__)

# Store the result for the waiting request unless it has closed; 1 if stored, 0 if the caller must deliver it.
_STORE_IF_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
"""


def _label_studio_source(context: JobContext, reference: dict) -> bytes:
    spec = reference["label_studio"]
    try:
        data = context.services.fetcher.fetch(spec["value"], spec.get("task"))
    except LabelStudioAuthError as exc:
        report_token_rejected(context.connection, exc)  # a configuration fault: the task fails unstored, said once a minute
        raise
    note_label_studio_ok(context.connection)
    return data


@dataclass(frozen=True)
class LabelStudioSinkParams:
    """Where and how the Label Studio sink writes: a project, under a model version, for these controls."""

    project: int
    model_version: str
    controls: tuple[Control, ...]
    request: str | None = None  # the /predict request waiting for these results, if any
    bulk: bool = False  # buffer, and import once per chunk (or write each as it comes, when overlapped)
    replace_older: bool = False  # delete this backend's older predictions of the tasks
    region_filter: RegionFilter = RegionFilter()
    interactive: bool = False  # a suggestion for an open labeling page: one region per instance, never stored late
    import_each: bool = False  # bulk work written one POST per prediction (large projects: see IMPORT_EACH_ABOVE)
    prompt_sources: tuple = ()  # the annotation id of each prompt of the chunk's prompt set, in its order

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "LabelStudioSinkParams":
        try:
            controls = tuple(Control(**{**c, "labels": tuple(c["labels"])}) for c in params["controls"])
            return cls(int(params["project"]), str(params["model_version"]), controls, params.get("request"),
                       bool(params.get("bulk")), bool(params.get("replace_older")), RegionFilter.from_json(params.get("regions")),
                       bool(params.get("interactive")), bool(params.get("import_each")), tuple(params.get("prompt_sources") or ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError(f"label_studio sink params: {type(exc).__name__}: {exc}") from None


def label_studio_sink(project: int, model_version: str, controls: Sequence[Control], *, request: str | None = None,
                      bulk: bool = False, replace_older: bool = False, region_filter: RegionFilter | None = None,
                      interactive: bool = False, import_each: bool = False, prompt_sources: Sequence = ()) -> SinkSpec:
    """The sink spec of a chunk whose results go to Label Studio. `prompt_sources`: the annotation id of each prompt
    of the chunk's prompt set, in its order, so that review records know which prompts took part."""
    return SinkSpec("label_studio", {"project": project, "model_version": model_version, "controls": [asdict(c) for c in controls],
                                     "request": request, "bulk": bulk, "replace_older": replace_older,
                                     "regions": (region_filter or RegionFilter()).to_json(), "interactive": interactive,
                                     "import_each": import_each, "prompt_sources": list(prompt_sources)})


class LabelStudioSink:
    """Bulk work (`bulk`) is buffered and imported into Label Studio once per chunk, by `flush`; when the job runs
    the writes beside the forward (`overlapped`), each prediction is written as it comes instead."""

    def __init__(self, context: JobContext, params: Mapping[str, Any]) -> None:
        target = LabelStudioSinkParams.from_params(params)
        connection = self.connection = context.connection
        self.services: Services = context.services
        self.project = target.project
        self.model_version = target.model_version
        self.controls = list(target.controls)
        self.request = target.request
        self.bulk = target.bulk
        self.replace_older = target.replace_older
        self.region_filter = target.region_filter
        self.interactive = target.interactive
        self.import_each = target.import_each
        self.prompt_sources = target.prompt_sources
        self._buffer: list[tuple[int, dict]] = []
        self._done_key = ""
        # Set by the job when writes run in threads beside the forward: bulk work is then written as it comes, one
        # POST per prediction, so Label Studio's time hides behind the next forward instead of ending the chunk
        # with one import the worker waits for (Label Studio 1.23.2's import grows with the project: IMPORT_EACH_ABOVE).
        # Written so, `write` keeps no state between calls, and `writers` threads may call it at once: the last
        # batch of a chunk, which nothing hides, waits for one round trip instead of one per task.
        self.overlapped = False
        self.writers = 4
        self._store_if_open = connection.register_script(_STORE_IF_OPEN)

    def write(self, task: dict, segmentation, done_key: str) -> None:
        task_id = task["id"]
        prediction = prediction_for(task_id, self.controls, segmentation.masks, segmentation.scores, self.model_version,
                                    self.region_filter, getattr(segmentation, "component_scores", None), instances=self.interactive)
        if self.prompt_sources and not self.interactive:
            record_prompts_used(self.connection, self.project, self.model_version, task_id, self.prompt_sources,
                                getattr(segmentation, "prompts", None) or {})
        if self.request:
            closed, results = request_keys(self.request)
            if self._store_if_open(keys=[closed, results, done_key], args=[str(task_id), json.dumps(prediction), RESULT_TTL, REQUEST_TTL]):
                return
        if self.interactive:
            # the page that asked has given up: a suggestion is never stored as a prediction
            log.info("project %s: task %s: interactive suggestion finished after its request closed; dropped", self.project, task_id)
            self._mark_done(done_key, task_id)
            return
        if self.bulk and self.overlapped:
            self._store([(task_id, prediction)], done_key)
            return
        if self.bulk:
            # a write retried after a failed flush replaces its own entry: nothing is buffered twice
            self._buffer = [(t, p) for t, p in self._buffer if t != task_id] + [(task_id, prediction)]
            self._done_key = done_key
            return
        if not self._already_there(task_id, prediction):
            self._call(lambda: self.services.require_client().create_prediction(task_id, prediction))
        self._mark_done(done_key, task_id)

    def _mark_done(self, done_key: str, task_id: object) -> None:
        with self.connection.pipeline() as pipe:
            pipe.sadd(done_key, str(task_id))
            pipe.expire(done_key, RESULT_TTL)
            pipe.execute()

    def flush(self) -> None:
        """Write the buffered predictions, in one import request (or one POST each, with `import_each`), skipping
        any a re-run already wrote."""
        if self._buffer:
            self._store(self._buffer, self._done_key)
            self._buffer = []

    def _store(self, items: list[tuple[int, dict]], done_key: str) -> None:
        """Write `items` to Label Studio unless a re-run already did, then mark them done."""
        current = self.connection.get(current_version_key(self.project))
        if current is not None and current.decode() != self.model_version:
            log.info("project %s: dropping %d predictions of superseded version %s", self.project, len(items), self.model_version)
            fresh = []
        else:
            fresh = self._not_yet_imported(items)
        client = self.services.require_client()
        if fresh:
            if self.import_each or self.overlapped:
                for task_id, prediction in fresh:
                    self._call(lambda: client.create_prediction(task_id, prediction))
            else:
                body = [{"task": t, **p} for t, p in fresh]
                self._call(lambda: client.import_predictions(self.project, body))
            self._make_current(client)
        if self.replace_older and fresh:
            for task_id, _ in fresh:
                # a prediction an annotator turned into an annotation is human work's origin: never deleted
                kept = {a.get("parent_prediction") for a in self._call(lambda: client.annotations(task_id))}
                for older in self._call(lambda: client.predictions(task_id)):
                    version = older.get("model_version") or ""
                    if version.startswith("seggpt-") and version != self.model_version and older["id"] not in kept:
                        self._call(lambda: client.delete_prediction(older["id"]))
        ids = [str(t) for t, _ in items]
        with self.connection.pipeline() as pipe:
            pipe.sadd(done_key, *ids)
            pipe.expire(done_key, RESULT_TTL)
            pipe.hdel(inflight_key(self.project, self.model_version), *ids)
            pipe.execute()

    def _not_yet_imported(self, items: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
        """The predictions of `items` Label Studio does not hold yet. A task is asked about (one GET each) only if an
        earlier attempt, by a crashed or duplicated chunk, got as far as importing it; the ids are noted before the
        import, so a crash after it cannot hide one. The first attempt, the usual case, costs Label Studio nothing."""
        key = import_attempts_key(self.project, self.model_version)
        ids = [str(t) for t, _ in items]
        with self.connection.pipeline() as pipe:
            pipe.smismember(key, ids)
            pipe.sadd(key, *ids)
            pipe.expire(key, RESULT_TTL)
            seen, _, _ = pipe.execute()
        return [(t, p) for (t, p), tried in zip(items, seen) if not (tried and self._already_there(t, p))]

    def _make_current(self, client) -> None:
        """Once this version has predictions, make it the project's model version (shown as pre-annotations).
        Label Studio only accepts a version that some prediction carries, so this waits for the first import."""
        flag = shown_version_key(self.project, self.model_version)
        if self.connection.set(flag, 1, nx=True, ex=SHOWN_VERSION_TTL):
            try:
                self._call(lambda: client.set_project_model_version(self.project, self.model_version))
            except Exception:
                self.connection.delete(flag)  # try again with the next chunk
                raise

    def _already_there(self, task_id: int, prediction: dict) -> bool:
        """Whether the task holds this very prediction (same version, same region ids): a re-run after a crash."""
        ours = {region["id"] for region in prediction["result"]}
        existing = self._call(lambda: self.services.require_client().predictions(task_id))
        return any(p.get("model_version") == self.model_version and {r.get("id") for r in p.get("result") or []} == ours for p in existing)

    def _call(self, action):
        """An action on Label Studio. Its client already retried within the deadline: a give-up or a rejected token
        fails the chunk's write (nothing stored); only a POST's 500 (the import may or may not have landed) is
        retried again, after the check for what is already there."""
        try:
            outcome = action()
        except LabelStudioAuthError as exc:
            report_token_rejected(self.connection, exc)
            raise
        except LabelStudioError as exc:
            if exc.transient and not exc.exhausted:
                raise TransientError(str(exc)) from None
            raise
        note_label_studio_ok(self.connection)
        return outcome


SOURCES: Mapping[str, Any] = MappingProxyType({"label_studio": _label_studio_source})
SINKS: Mapping[str, Any] = MappingProxyType({"label_studio": LabelStudioSink})
