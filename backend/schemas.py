"""Pydantic models of the bodies Label Studio sends (see shared/reference/ls-1.23.2-requests).

Validated at the edge: a body that does not fit gets a 422 naming the field, and nothing malformed reaches a
worker (a task id of 1.5 used to cost three failed worker runs).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

__all__ = ["SetupRequest", "PredictRequest", "PredictTask", "TrainRequest", "WebhookEvent", "ProjectRef", "PROJECT_PATTERN"]

PROJECT_PATTERN = r"^\d+(\.\d+)?$"


def _project_ref(value: str | int) -> str | int:
    if isinstance(value, bool) or (isinstance(value, int) and value < 0) or (isinstance(value, str) and not re.match(PROJECT_PATTERN, value)):
        raise ValueError(f"project {value!r} is not '<id>' or '<id>.<timestamp>'")
    return value


# "12.1724151234" (id.timestamp, as Label Studio sends it) or 12
ProjectRef = Annotated[StrictInt | str, AfterValidator(_project_ref)]


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: ProjectRef = Field(description="'<id>.<timestamp>' or '<id>'")
    schema_: str = Field(alias="schema", description="the label config XML")
    hostname: str | None = None
    access_token: str | None = Field(default=None, repr=False)
    extra_params: Any = None


class PredictTask(BaseModel):
    """A task as Label Studio sends it: the id and data are what the backend reads."""
    model_config = ConfigDict(extra="allow")
    id: StrictInt
    data: dict[str, Any] | None = None
    project: ProjectRef | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[PredictTask]
    project: ProjectRef | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: ProjectRef = Field(description="'<id>.<timestamp>' or '<id>'")
    label_config: str | None = None
    annotations: list[dict[str, Any]] | None = None  # ignored: the job re-reads the project's annotations


class WebhookProject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: StrictInt
    label_config: str | None = None


class WebhookEvent(BaseModel):
    """Only a hint of what changed: ids are taken from it, never content (the jobs re-read Label Studio)."""
    model_config = ConfigDict(extra="allow")
    action: str = Field(max_length=64)
    project: WebhookProject | None = None
    # one object, or a list for the bulk events (ANNOTATIONS_CREATED sends a list of each)
    annotation: dict[str, Any] | list[dict[str, Any]] | None = None
    annotations: list[dict[str, Any]] | None = None
    task: dict[str, Any] | list[dict[str, Any]] | None = None
    tasks: list[dict[str, Any]] | None = None
