"""The job contract: what a segmentation chunk carries, built here and checked here when a worker reads it.

A payload travels as plain JSON (RQ's JSON serializer); these dataclasses are its only writers and readers, so
a malformed payload fails with a message naming the field, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from seggpt_core.marks import Mark, MarkError

from .codec import b64png_to_mask, mask_to_b64png

__all__ = ["PayloadError", "TaskRef", "PromptSetRef", "SinkSpec", "PredictionOptions", "SegmentationChunk", "ChunkProgress",
           "WorkerInfo", "mark_to_json", "mark_from_json", "DTYPES"]


class PayloadError(ValueError):
    """A job payload that does not follow the contract."""


def _require(data: Any, key: str, kind: type | tuple, where: str) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise PayloadError(f"{where}: missing {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise PayloadError(f"{where}: {key!r} must be {names}, got {type(value).__name__}")
    return value


def mark_to_json(mark: Any) -> dict:
    """A `seggpt_core.marks.Mark` as JSON (a mask as base64 PNG)."""
    data: dict[str, Any] = {"label": mark.label, "positive": mark.positive}
    if mark.point is not None:
        data["point"] = list(mark.point)
    elif mark.box is not None:
        data["box"] = list(mark.box)
    else:
        data["mask"] = mask_to_b64png(mark.mask)
    return data


def mark_from_json(data: Any, where: str) -> Any:
    if not isinstance(data, Mapping) or not isinstance(data.get("label"), str):
        raise PayloadError(f"{where}: a mark needs a 'label' string")
    try:
        return Mark(data["label"], tuple(map(float, data["point"])) if data.get("point") is not None else None,
                    tuple(map(float, data["box"])) if data.get("box") is not None else None,
                    b64png_to_mask(data["mask"]) if data.get("mask") is not None else None, bool(data.get("positive", True)))
    except (MarkError, TypeError, ValueError) as exc:
        raise PayloadError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class TaskRef:
    """One task: its id, where its image comes from (one key naming a registered source), and the annotator's
    marks on it (`seggpt_core.marks.Mark`s), if it is segmented from marked instances in its own image."""

    id: int | str
    image: Mapping[str, Any]
    marks: tuple = ()

    def __post_init__(self) -> None:
        if not isinstance(self.image, Mapping) or len(self.image) != 1:
            raise PayloadError(f"task {self.id!r}: image reference {self.image!r} must be an object with exactly one source key")

    def to_json(self) -> dict:
        data = {"id": self.id, "image": dict(self.image)}
        if self.marks:
            data["marks"] = [mark_to_json(h) for h in self.marks]
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> "TaskRef":
        marks = data.get("marks") or [] if isinstance(data, Mapping) else []
        if not isinstance(marks, list):
            raise PayloadError(f"{where}: 'marks' must be a list")
        return cls(_require(data, "id", (int, str), where), _require(data, "image", Mapping, where),
                   tuple(mark_from_json(h, f"{where}: mark {i}") for i, h in enumerate(marks)))


@dataclass(frozen=True)
class PromptSetRef:
    """The prompts of a chunk: a stored prompt set (by content digest) and/or a learned prompt (by digest)."""

    digest: str | None = None
    learned: str | None = None

    @property
    def empty(self) -> bool:
        return self.digest is None and self.learned is None

    def to_json(self) -> dict:
        return {"digest": self.digest, "learned": self.learned}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "PromptSetRef":
        if not isinstance(data, Mapping):
            raise PayloadError(f"{where}: 'prompts' must be an object, got {type(data).__name__}")
        return cls(data.get("digest"), data.get("learned"))


@dataclass(frozen=True)
class SinkSpec:
    """Where results go: a sink registered by name, and what that sink needs (JSON)."""

    name: str = "redis"
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "SinkSpec":
        return cls(_require(data, "name", str, where), dict(_require(data, "params", Mapping, where)))


DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The dtypes a job may ask for ("auto": each device's default: bf16 on CUDA, fp32 on CPU)."""

_CHOICES = {"strategy": ("similar", "recent"), "embedding_type": ("instance", "semantic"), "score": ("crisp", "agreement")}


def _checked_int(value: Any, name: str, where: str, least: int) -> int:
    # bool is an int to Python, never to a payload
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise PayloadError(f"{where}: {name!r} must be a whole number >= {least}, got {value!r}")
    return value


@dataclass(frozen=True)
class PredictionOptions:
    """Everything besides the weights and the prompts that shapes a chunk's masks, and how a worker batches them.
    Built by the backend (`Settings.prediction_options`) or a CLI command; read by the worker (`segment_chunk`,
    `WorkerRuntime`); the model version is computed from `fingerprint()` (see `backend.predict_service`)."""

    k: int = 0  # prompts per label for each target (feature ensemble); 0: every prompt that annotates the label
    strategy: str = "similar"  # how the k are chosen: "similar" (by image embedding) or "recent" (see `selection`)
    embedding_type: str = "instance"
    score: str = "crisp"  # "agreement": also paints the mirrored image, for a score that orders masks by quality
    spatial_ensemble: bool = False
    labels_per_forward: int = 0  # 0: the model's own limit (its config)
    dtype: str | None = None  # the dtype the worker must run; None: any worker will do
    batch_targets: int | None = None  # targets per forward; None: BATCH_TARGETS (does not change the masks)

    def __post_init__(self) -> None:
        where = "prediction options"
        _checked_int(self.k, "k", where, 0)
        _checked_int(self.labels_per_forward, "labels_per_forward", where, 0)
        if self.batch_targets is not None:
            _checked_int(self.batch_targets, "batch_targets", where, 1)
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise PayloadError(f"{where}: {name!r} must be {' or '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.spatial_ensemble, bool):
            raise PayloadError(f"{where}: 'spatial_ensemble' must be true or false, got {self.spatial_ensemble!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise PayloadError(f"{where}: 'dtype' must be one of {', '.join(DTYPES)} or null, got {self.dtype!r}")

    def to_json(self) -> dict:
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}

    @classmethod
    def from_json(cls, data: Any, where: str = "prediction options") -> "PredictionOptions":
        """Absent keys take their defaults (a job queued before a key existed); unknown keys are refused."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PayloadError(f"{where}: 'options' must be an object, got {type(data).__name__}")
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PayloadError(f"{where}: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        try:
            return cls(**{k: v for k, v in data.items() if v is not None or k in ("dtype", "batch_targets")})
        except PayloadError as exc:
            raise PayloadError(str(exc).replace("prediction options", where, 1)) from None

    def fingerprint(self) -> dict:
        """The options that change what a mask looks like, in the model version's own spelling (a default that was
        added later is left out, so that the versions made before it stay as they were)."""
        return {"num_prompts": self.k, "dtype": self.dtype, "embedding_type": self.embedding_type, "prompt_strategy": self.strategy,
                **({"labels_per_forward": self.labels_per_forward} if self.labels_per_forward else {}),
                **({"score": self.score} if self.score != "crisp" else {}),
                **({"spatial_ensemble": True} if self.spatial_ensemble else {})}


@dataclass(frozen=True)
class SegmentationChunk:
    """Tasks segmented with one prompt set and stored through one sink, by a worker with the expected weights."""

    prompts: PromptSetRef
    tasks: tuple[TaskRef, ...]
    namespace: str
    sink: SinkSpec = SinkSpec()
    options: PredictionOptions = PredictionOptions()
    weights_digest: str | None = None  # None: any weights will do
    run: str | None = None  # the run the chunk belongs to, which `cancel_run` can stop

    def __post_init__(self) -> None:
        if self.prompts.empty and not all(task.marks for task in self.tasks):
            raise PayloadError("a prompt-set reference needs a prompt set digest, a learned prompt, or both "
                               "(only tasks segmented from their own marked instances, with marks, need no prompts)")

    def to_json(self) -> dict:
        return {"prompts": self.prompts.to_json(), "tasks": [t.to_json() for t in self.tasks], "namespace": self.namespace,
                "sink": self.sink.to_json(), "options": self.options.to_json(), "weights_digest": self.weights_digest, "run": self.run}

    @classmethod
    def from_json(cls, data: Any, where: str = "segmentation chunk") -> "SegmentationChunk":
        tasks = _require(data, "tasks", list, where)
        return cls(
            prompts=PromptSetRef.from_json(_require(data, "prompts", Mapping, where), f"{where}: prompts"),
            tasks=tuple(TaskRef.from_json(task, f"{where}: task {index}") for index, task in enumerate(tasks)),
            namespace=_require(data, "namespace", str, where),
            sink=SinkSpec.from_json(_require(data, "sink", Mapping, where), f"{where}: sink"),
            options=PredictionOptions.from_json(data.get("options"), f"{where}: options"),
            weights_digest=data.get("weights_digest"),
            run=data.get("run"),
        )


@dataclass
class ChunkProgress:
    """What a segmentation chunk's `job.meta` holds: written by the queue (at enqueue), the chunk's run and a worker
    that declines it; read by progress, failures and status. `to_meta` leaves out what was never set."""

    total: int = 0
    done: int = 0
    failed: int = 0  # tasks that failed, for any reason (so far)
    namespace: str | None = None  # the results' namespace, set at enqueue
    worker_pid: int | None = None  # the process running the chunk now
    overlapped: bool | None = None  # whether loading and writing ran in threads beside the forward
    failed_tasks: dict[str, str] = field(default_factory=dict)  # task id -> reason, at the end of a run
    input_failures: list[str] = field(default_factory=list)  # the ids among them that failed because of their input
    seconds: float | None = None
    # seconds of the run by stage (load, inputs: the forward waiting for its targets, forward, writes: waiting for
    # the last writes, write): where a worker's time went besides the model
    stages: dict[str, float] = field(default_factory=dict)
    helper_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the loader and writer threads
    model_loads_in_job: int | None = None
    worker: dict | None = None  # the `WorkerInfo` of the worker that ran it, as JSON
    cancelled: int | None = None  # tasks left undone because the run was cancelled; None: not cancelled
    weights_wait_since: float | None = None  # when a worker first declined it (other weights or dtype)
    declined_by: dict[str, str] = field(default_factory=dict)  # worker name -> what it had instead
    declined_logged: bool = False

    def to_meta(self) -> dict:
        empty = ChunkProgress()
        return {spec.name: getattr(self, spec.name) for spec in fields(self)
                if spec.name in ("total", "done", "failed") or getattr(self, spec.name) != getattr(empty, spec.name)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> "ChunkProgress":
        """Keys that are not a chunk's (another job's meta) are ignored; a known key of the wrong type is refused."""
        meta = meta or {}
        known = {spec.name: spec for spec in fields(cls)}
        values = {name: meta[name] for name in known if meta.get(name) is not None}
        for name in ("total", "done", "failed"):
            if name in values:
                _checked_int(values[name], name, "chunk progress", 0)
        for name in ("failed_tasks", "declined_by", "stages", "helper_cpu"):
            if name in values and not isinstance(values[name], Mapping):
                raise PayloadError(f"chunk progress: {name!r} must be an object, got {type(values[name]).__name__}")
        if "input_failures" in values:
            values["input_failures"] = [str(v) for v in _require(values, "input_failures", list, "chunk progress")]
        return cls(**values)


@dataclass(frozen=True)
class WorkerInfo:
    """What a live worker publishes about itself (`keys.worker_info_key`), for status, /metrics and a web process
    that learns the weights digest from its workers."""

    pid: int
    device: str
    weights: str
    weights_digest: str | None = None
    dtype: str = "auto"
    model_loads: int = 0
    model_load_seconds: float = 0.0
    prompt_preparations: int = 0
    prompt_cache_sets: int = 0
    prompt_cache_bytes: int = 0
    prompt_cache_limit_bytes: int | None = None
    max_batch_rows: int | None = None
    name: str | None = None  # the RQ worker's name, host and queues: set by the worker process, not the runtime
    host: str | None = None
    queues: tuple[str, ...] = ()
    role: str = "model"  # "control": a worker of the backend's own jobs, without a model

    def to_json(self) -> dict:
        data = {spec.name: getattr(self, spec.name) for spec in fields(self)}
        data["queues"] = list(self.queues)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "worker info") -> "WorkerInfo":
        """Unknown keys are ignored: a newer worker may publish more than this process knows."""
        if not isinstance(data, Mapping):
            raise PayloadError(f"{where}: must be an object, got {type(data).__name__}")
        known = {spec.name for spec in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        _require(values, "pid", int, where)
        _require(values, "device", str, where)
        _require(values, "weights", str, where)
        if values.get("weights_digest") is not None and not isinstance(values["weights_digest"], str):
            raise PayloadError(f"{where}: 'weights_digest' must be str, got {type(values['weights_digest']).__name__}")
        if "queues" in values:
            values["queues"] = tuple(_require(values, "queues", list, where))
        return cls(**values)
