"""A real Label Studio 1.23.2 for end-to-end tests, and our backend as a real process beside it.

Label Studio is pip-installed into its own virtual environment, cached outside the repository
(`SEGGPT_LS_VENV`, default `~/.cache/seggpt-ls/ls-1.23.2`; about 70 s the first time), started on loopback with
the flags a loopback ML backend needs, and given a user, a legacy token and a personal access token.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import httpx
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

LS_VERSION = "1.23.2"
USER = "admin@example.com"
PASSWORD = "harness-password-1"


def brush_result(mask, label: str, rid: str, from_name: str, to_name: str) -> dict:
    """A brush region as the labeling UI saves it, for annotations made through the API."""
    import numpy as np
    from label_studio_sdk.converter.brush import mask2rle

    height, width = mask.shape
    return {"id": rid, "from_name": from_name, "to_name": to_name, "type": "brushlabels", "original_width": width,
            "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ls_venv() -> Path:
    """The Label Studio virtual environment, installed on first use."""
    venv = Path(os.environ.get("SEGGPT_LS_VENV", Path.home() / ".cache" / "seggpt-ls" / f"ls-{LS_VERSION}"))
    executable = venv / "bin" / "label-studio"
    if executable.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", f"label-studio=={LS_VERSION}"],
        capture_output=True, text=True, timeout=1800,
    )
    if result.returncode != 0 or not executable.exists():
        raise RuntimeError(f"installing label-studio=={LS_VERSION} failed: {result.stderr[-2000:]}")
    return venv


def wait_http(url: str, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode} before answering:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {timeout} s")


@dataclass
class LabelStudio:
    url: str
    legacy_token: str
    process: subprocess.Popen
    log: Path
    pat: str = ""
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.legacy_token}"}, timeout=120)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def login(self) -> httpx.Client:
        """A browser-like session logged in through the form."""
        session = httpx.Client(base_url=self.url, follow_redirects=False, timeout=60)
        session.get("/user/login/")
        response = session.post(
            "/user/login/",
            data={"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies.get("csrftoken")},
            headers={"Referer": f"{self.url}/user/login/"},
        )
        assert response.status_code == 302, f"login failed: HTTP {response.status_code}"
        return session

    def create_pat(self) -> str:
        session = self.login()
        response = session.post("/api/token/", headers={"X-CSRFToken": session.cookies.get("csrftoken"), "Referer": f"{self.url}/"})
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def create_project(self, title: str, label_config: str) -> int:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": label_config}).json()["id"]

    def upload(self, project: int, files: dict[str, bytes]) -> None:
        # one form field per file: Label Studio keeps one file per field name
        self.api("POST", f"/api/projects/{project}/import", files=[(name, (name, data)) for name, data in files.items()])

    def import_tasks(self, project: int, tasks: list[dict]) -> None:
        self.api("POST", f"/api/projects/{project}/import", json=tasks)

    def tasks(self, project: int) -> list[dict]:
        body = self.api("GET", "/api/tasks", params={"project": project, "page_size": 1000, "fields": "all"}).json()
        return sorted(body["tasks"] if isinstance(body, dict) else body, key=lambda t: t["id"])

    def annotate(self, task_id: int, result: list[dict]) -> dict:
        return self.api("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result}).json()

    def predictions(self, task_id: int) -> list[dict]:
        return self.api("GET", "/api/predictions/", params={"task": task_id}).json()

    def connect_backend(self, project: int, url: str, user: str, password: str, interactive: bool = False) -> dict:
        return self.api("POST", "/api/ml", json={
            "url": url, "project": project, "title": "seggpt-ls", "is_interactive": interactive,
            "auth_method": "BASIC_AUTH", "basic_auth_user": user, "basic_auth_pass": password,
        }).json()

    def retrieve_predictions(self, project: int, task_ids: list[int] | None = None) -> dict:
        selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
        return self.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                        json={"selectedItems": selected}).json()

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
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(directory / "xdg"),
        # a backend on loopback is refused unless both protections are off (see the contract notes)
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
    }
    log = directory / "label-studio.log"
    process = subprocess.Popen(
        [*command_prefix, str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", bind, "--port", str(port),
         "--data-dir", str(directory / "data"), "--username", USER, "--password", PASSWORD, "--user-token", token,
         "--enable-legacy-api-token"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec(),
    )
    url = f"http://127.0.0.1:{port}"
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
