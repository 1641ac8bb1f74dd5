"""Shared request dependencies: settings, Redis, and HTTP Basic auth."""

from __future__ import annotations

import secrets
from typing import Annotated

import redis
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from .settings import Settings

__all__ = ["SettingsDep", "RedisDep", "require_basic_auth"]

_basic = HTTPBasic(auto_error=False)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]


def require_basic_auth(settings: SettingsDep, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> None:
    """When BASIC_AUTH_USER/PASS are set, the credentials must match (compared in constant time)."""
    if not settings.basic_auth_user:
        return
    if credentials is not None:
        user_ok = secrets.compare_digest(credentials.username.encode(), settings.basic_auth_user.encode())
        pass_ok = secrets.compare_digest(credentials.password.encode(), settings.basic_auth_pass.encode())
        if user_ok and pass_ok:
            return
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "HTTP Basic auth required", headers={"WWW-Authenticate": 'Basic realm="seggpt-ls"'})
