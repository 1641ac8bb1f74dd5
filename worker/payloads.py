"""The job contract: what a segmentation chunk carries, built here and checked here when a worker reads it.

A payload travels as plain JSON (RQ's JSON serializer); these dataclasses are its only writers and readers, so
a malformed payload fails with a message naming the field, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["PayloadError", "TaskRef", "PromptSetRef", "SinkSpec", "SegmentationChunk", "mark_to_json", "mark_from_json"]


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
    from .codec import mask_to_b64png

    data: dict[str, Any] = {"label": mark.label, "positive": mark.positive}
    if mark.point is not None:
        data["point"] = list(mark.point)
    elif mark.box is not None:
        data["box"] = list(mark.box)
    else:
        data["mask"] = mask_to_b64png(mark.mask)
    return data


def mark_from_json(data: Any, where: str) -> Any:
    from seggpt_core.marks import Mark, MarkError

    from .codec import b64png_to_mask

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


@dataclass(frozen=True)
class SegmentationChunk:
    """Tasks segmented with one prompt set and stored through one sink, by a worker with the expected weights."""

    prompts: PromptSetRef
    tasks: tuple[TaskRef, ...]
    namespace: str
    sink: SinkSpec = SinkSpec()
    options: Mapping[str, Any] = field(default_factory=dict)
    weights_digest: str | None = None  # None: any weights will do
    run: str | None = None  # the run the chunk belongs to, which `cancel_run` can stop

    def __post_init__(self) -> None:
        if self.prompts.empty and not all(task.marks for task in self.tasks):
            raise PayloadError("a prompt-set reference needs a prompt set digest, a learned prompt, or both "
                               "(only tasks segmented from their own marked instances, with marks, need no prompts)")

    def to_json(self) -> dict:
        return {"prompts": self.prompts.to_json(), "tasks": [t.to_json() for t in self.tasks], "namespace": self.namespace,
                "sink": self.sink.to_json(), "options": dict(self.options), "weights_digest": self.weights_digest, "run": self.run}

    @classmethod
    def from_json(cls, data: Any, where: str = "segmentation chunk") -> "SegmentationChunk":
        tasks = _require(data, "tasks", list, where)
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise PayloadError(f"{where}: 'options' must be an object")
        return cls(
            prompts=PromptSetRef.from_json(_require(data, "prompts", Mapping, where), f"{where}: prompts"),
            tasks=tuple(TaskRef.from_json(task, f"{where}: task {index}") for index, task in enumerate(tasks)),
            namespace=_require(data, "namespace", str, where),
            sink=SinkSpec.from_json(_require(data, "sink", Mapping, where), f"{where}: sink"),
            options=dict(options),
            weights_digest=data.get("weights_digest"),
            run=data.get("run"),
        )
