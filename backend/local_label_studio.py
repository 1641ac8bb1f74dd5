"""A Label Studio of its own on this machine: installed into a cached virtual environment, started on loopback with
the flags an ML backend on the same host needs, and reached through its API as a user would.

Used by `seggpt-ls tryout` and by the test harness. Label Studio never goes into the project's environment: its pins
conflict with ours.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import httpx
import numpy as np

from worker.lifecycle import exec_child_preexec
from worker.settings import inherited_environment

from .settings import LocalLabelStudioSettings

__all__ = ["LS_VERSION", "free_port", "ls_venv", "wait_http", "start_process", "login", "create_pat",
           "access_token", "brush_result", "LabelStudioApi"]

LS_VERSION = "1.23.2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ls_venv(version: str = LS_VERSION, say: Callable[[str], None] | None = None,
            settings: LocalLabelStudioSettings | None = None) -> Path:
    """The Label Studio virtual environment that `settings` name (default: this process's, SEGGPT_LS_VENV, else
    `~/.cache/seggpt-ls/ls-VERSION`), installed on first use (about 1-2 minutes)."""
    venv = (settings or LocalLabelStudioSettings.from_env()).venv_for(version).expanduser()
    executable = venv / "bin" / "label-studio"
    if executable.exists():
        return venv
    if say:
        say(f"installing label-studio=={version} into {venv} (once; later runs reuse it)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", f"label-studio=={version}"],
        capture_output=True, text=True, timeout=1800,
    )
    if result.returncode != 0 or not executable.exists():
        raise RuntimeError(f"installing label-studio=={version} into {venv} failed: {result.stderr.strip()[-2000:]}")
    return venv


def wait_http(url: str, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Until `url` answers 200; fails early, with the log's tail, when `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode} before answering:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


def start_process(venv: Path, directory: Path, port: int, user: str, password: str, token: str, *,
                  command_prefix: Sequence[str] = (), bind: str = "127.0.0.1") -> subprocess.Popen:
    """`label-studio start` on `bind`:`port` with its data under `directory`, a first user with a legacy token; the
    kernel ends it with this process (SIGKILL included). Its log is `directory/label-studio.log`. `command_prefix`
    runs it through another command (the multi-host harness: inside a network namespace, pinned to a CPU)."""
    directory.mkdir(parents=True, exist_ok=True)
    env = inherited_environment({
        "XDG_DATA_HOME": str(directory / "xdg"),
        # a backend on loopback is refused unless both protections are off (docs/pitfalls.md)
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
    })
    return subprocess.Popen(
        [*command_prefix, str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", bind, "--port", str(port),
         "--data-dir", str(directory / "data"), "--username", user, "--password", password, "--user-token", token,
         "--enable-legacy-api-token"],
        env=env, stdout=open(directory / "label-studio.log", "ab"), stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec(),
    )


def login(url: str, user: str, password: str) -> httpx.Client:
    """A browser-like session, logged in through the form."""
    session = httpx.Client(base_url=url, follow_redirects=False, timeout=60)
    session.get("/user/login/")
    response = session.post("/user/login/", data={"email": user, "password": password, "csrfmiddlewaretoken": session.cookies.get("csrftoken")},
                            headers={"Referer": f"{url}/user/login/"})
    if response.status_code != 302:
        raise RuntimeError(f"logging into Label Studio at {url} as {user} failed: HTTP {response.status_code}")
    return session


def create_pat(url: str, user: str, password: str) -> str:
    """A personal access token, as Account & Settings makes one (it is a refresh token: see `access_token`)."""
    session = login(url, user, password)
    response = session.post("/api/token/", headers={"X-CSRFToken": session.cookies.get("csrftoken"), "Referer": f"{url}/"})
    if response.status_code != 201:
        raise RuntimeError(f"creating a personal access token failed: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()["token"]


def access_token(url: str, pat: str) -> str:
    """The short-lived access token a personal access token is exchanged for (`Authorization: Bearer ...`)."""
    response = httpx.post(f"{url}/api/token/refresh/", json={"refresh": pat}, timeout=30)
    response.raise_for_status()
    return response.json()["access"]


def brush_result(mask, label: str, rid: str, from_name: str, to_name: str) -> dict:
    """A brush region as the labeling UI saves it, for annotations made through the API."""
    from label_studio_sdk.converter.brush import mask2rle  # slow import: see backend/__init__.py

    height, width = mask.shape
    return {"id": rid, "from_name": from_name, "to_name": to_name, "type": "brushlabels", "original_width": width,
            "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}


class LabelStudioApi:
    """The few API calls a person's setup makes: projects, uploads, annotations, the ML backend."""

    def __init__(self, url: str, token: str, scheme: str = "Token") -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"{scheme} {token}"}, timeout=120)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"Label Studio {method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def version(self) -> str:
        return self.api("GET", "/api/version").json().get("release", "")

    def create_project(self, title: str, label_config: str) -> int:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": label_config}).json()["id"]

    def project(self, project: int) -> dict | None:
        response = self.http.get(f"/api/projects/{project}")
        return response.json() if response.status_code == 200 else None

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

    def backends(self, project: int) -> list[dict]:
        return self.api("GET", "/api/ml", params={"project": project}).json()

    def retrieve_predictions(self, project: int, task_ids: list[int] | None = None) -> dict:
        selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
        return self.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                        json={"selectedItems": selected}).json()
