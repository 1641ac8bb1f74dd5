"""Shared request dependencies: settings, Redis, and HTTP Basic auth."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Annotated, Mapping

import redis
from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ValidationError

from .settings import Settings

__all__ = ["SettingsDep", "RedisDep", "require_basic_auth", "basic_auth_ok", "webhook_auth_ok", "WEBHOOK_SECRET_HEADER", "parsed_body"]

WEBHOOK_SECRET_HEADER = "x-seggpt-webhook-secret"

_basic = HTTPBasic(auto_error=False)


# async: they only read memory, and FastAPI runs a sync dependency on the request thread pool (a hop per request,
# which a flood of refused requests multiplied)
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]


def _credentials_match(settings: Settings, username: str, password: str) -> bool:
    """Compared in constant time."""
    user_ok = secrets.compare_digest(username.encode(), settings.basic_auth_user.encode())
    pass_ok = secrets.compare_digest(password.encode(), settings.basic_auth_pass.encode())
    return user_ok and pass_ok


def basic_auth_ok(settings: Settings, authorization: str | None) -> bool:
    """Whether an Authorization header value passes (always, when no Basic auth is configured)."""
    if not settings.basic_auth_user:
        return True
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        username, separator, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(separator) and _credentials_match(settings, username, password)


def webhook_auth_ok(settings: Settings, headers: Mapping[str, str]) -> bool:
    """/webhook without SEGGPT_WEBHOOK_SECRET is open (its bodies are hints); with it, the secret header or the Basic
    auth credentials are needed (Label Studio's START_TRAINING comes through its ML client, with Basic auth but
    without the webhook's custom headers)."""
    if not settings.webhook_secret:
        return True
    given = headers.get(WEBHOOK_SECRET_HEADER, "")
    if given and secrets.compare_digest(given.encode(), settings.webhook_secret.encode()):
        return True
    return bool(settings.basic_auth_user) and basic_auth_ok(settings, headers.get("authorization"))


async def require_basic_auth(settings: SettingsDep, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> None:
    """When BASIC_AUTH_USER/PASS are set, the credentials must match."""
    if not settings.basic_auth_user:
        return
    if credentials is not None and _credentials_match(settings, credentials.username, credentials.password):
        return
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "HTTP Basic auth required", headers={"WWW-Authenticate": 'Basic realm="seggpt-ls"'})


async def _raw_body(request: Request) -> bytes:
    return await request.body()  # already read (and bounded) by `request_guard`: no parsing on the event loop


def parsed_body(model: type[BaseModel]):
    """A dependency that validates the body as `model` on a request thread, not on the event loop: FastAPI parses a
    sync route's body on the loop, where a 1 MB webhook or an 8 MB /predict held up /health. A body that does not fit
    gets FastAPI's own 422, the field named as ["body", ...]."""

    def parse(raw: Annotated[bytes, Depends(_raw_body)]) -> BaseModel:
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) from None

    return parse
