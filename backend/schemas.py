"""Pydantic models of the bodies Label Studio sends (see shared/reference/ls-1.23.2-requests)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SetupRequest", "PredictRequest", "TrainRequest", "WebhookEvent"]


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: str | int = Field(description="'<id>.<timestamp>' or '<id>'")
    schema_: str = Field(alias="schema", description="the label config XML")
    hostname: str | None = None
    access_token: str | None = Field(default=None, repr=False)
    extra_params: Any = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: str | int = Field(description="'<id>.<timestamp>' or '<id>'")
    label_config: str | None = None
    annotations: list[dict[str, Any]] | None = None  # ignored: the job re-reads the project's annotations


class WebhookEvent(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str
    project: dict[str, Any] | None = None
    # one object, or a list for the bulk events (ANNOTATIONS_CREATED sends a list of each)
    annotation: dict[str, Any] | list[dict[str, Any]] | None = None
    annotations: list[dict[str, Any]] | None = None
    task: dict[str, Any] | list[dict[str, Any]] | None = None
    tasks: list[dict[str, Any]] | None = None
