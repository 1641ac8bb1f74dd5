"""A real Label Studio 1.23.2 for end-to-end tests, and our backend as a real process beside it.

Label Studio is pip-installed into its own virtual environment, cached outside the repository
(`SEGGPT_LS_VENV`, default `~/.cache/seggpt-ls/ls-1.23.2`; about 70 s the first time), started on loopback with
the flags a loopback ML backend needs, and given a user, a legacy token and a personal access token.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import httpx

from backend.local_label_studio import LS_VERSION, LabelStudioApi, brush_result, create_pat, free_port, ls_venv, start_process, wait_http
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

__all__ = ["LS_VERSION", "USER", "PASSWORD", "brush_result", "free_port", "ls_venv", "wait_http", "LabelStudio",
           "start_label_studio", "Backend", "start_backend"]

USER = "admin@example.com"
PASSWORD = "harness-password-1"


class LabelStudio(LabelStudioApi):
    """The product's API client, plus the process and what the tests need to know about it."""

    def __init__(self, url: str, legacy_token: str, process: subprocess.Popen, log: Path) -> None:
        super().__init__(url, legacy_token)
        self.legacy_token = legacy_token
        self.process = process
        self.log = log
        self.pat = ""

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def login(self) -> httpx.Client:
        from backend.local_label_studio import login

        return login(self.url, USER, PASSWORD)

    def create_pat(self) -> str:
        return create_pat(self.url, USER, PASSWORD)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_label_studio(directory: Path, *, command_prefix: Sequence[str] = (), bind: str = "127.0.0.1", port: int | None = None,
                       timeout: float = 240) -> LabelStudio:
    """Label Studio on `bind`:`port`, started through `command_prefix` (the multi-host harness runs it inside
    another network namespace, pinned to a CPU; then the caller must also be in that namespace to reach it)."""
    directory.mkdir(parents=True, exist_ok=True)
    venv = ls_venv()
    port = port or free_port()
    token = secrets.token_hex(20)
    process = start_process(venv, directory, port, USER, PASSWORD, token, command_prefix=command_prefix, bind=bind)
    url = f"http://127.0.0.1:{port}"
    log = directory / "label-studio.log"
    wait_http(f"{url}/health", timeout, "Label Studio", process, log)
    server = LabelStudio(url, token, process, log)
    server.pat = server.create_pat()
    return server


@dataclass
class Backend:
    url: str
    process: subprocess.Popen
    model_dir: Path
    log: Path
    user: str = "ls-backend"
    password: str = "backend-pass-1"
    env: dict = field(default_factory=dict)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        from worker import EmbeddedRedis

        EmbeddedRedis(self.model_dir / "redis").stop()

    def redis(self):
        from worker import EmbeddedRedis

        return EmbeddedRedis(self.model_dir / "redis").connect()


def start_backend(directory: Path, label_studio: LabelStudio, *, api_key: str | None = None, workers: int = 1, extra_env: dict | None = None) -> Backend:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    backend = Backend(f"http://127.0.0.1:{port}", None, directory, directory / "backend.log")
    env = {
        **os.environ,
        "MODEL_DIR": str(directory),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": api_key or label_studio.legacy_token,
        "BASIC_AUTH_USER": backend.user,
        "BASIC_AUTH_PASS": backend.password,
        "SEGGPT_WEIGHTS": "random:tiny",
        "SEGGPT_DEVICE": "cpu",
        **(extra_env or {}),
    }
    env.pop("REDIS_URL", None)
    backend.env = {k: v for k, v in env.items() if k.startswith(("SEGGPT_", "ALLOWED_", "LABEL_STUDIO_"))}
    backend.process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=open(backend.log, "wb"), stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec(),
    )
    wait_http(f"{backend.url}/health", 60, "seggpt-ls serve", backend.process, backend.log)
    return backend
