"""A small Label Studio API client: auth (legacy token or personal access token), the few endpoints we use.

httpx directly rather than the SDK client: the same authenticated session must also fetch media with our own
host checks, size limits and redirect policy, which the SDK client does not offer.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Iterator
from urllib.parse import urlsplit

import httpx

__all__ = ["LabelStudioAuth", "LabelStudioClient", "LabelStudioError", "is_personal_access_token"]

log = logging.getLogger(__name__)


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


def is_personal_access_token(key: str) -> bool:
    """PATs are JWT refresh tokens (three base64url parts); legacy tokens are 40 hex characters."""
    parts = key.split(".")
    return len(parts) == 3 and all(parts)


def _jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, KeyError, ValueError):
        return None


class LabelStudioAuth:
    """Builds the Authorization header. A PAT is exchanged at /api/token/refresh/ for a short-lived access
    token, refreshed a minute before it expires. The key itself is never logged."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LabelStudioAuth({self.base_url!r}, kind={'pat' if self.is_pat else 'legacy'})"

    @property
    def is_pat(self) -> bool:
        return is_personal_access_token(self._key)

    def header(self) -> dict[str, str]:
        if not self._key:
            return {}
        if not self.is_pat:
            return {"Authorization": f"Token {self._key}"}
        with self._lock:
            if self._access is None or time.time() > self._expires - 60:
                self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def _refresh(self) -> None:
        try:
            response = httpx.post(f"{self.base_url}/api/token/refresh/", json={"refresh": self._key}, timeout=15)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"cannot reach Label Studio to refresh the access token: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise LabelStudioError(f"Label Studio refused the personal access token (HTTP {response.status_code})", response.status_code)
        self._access = response.json()["access"]
        self._expires = _jwt_expiry(self._access) or time.time() + 300

    def invalidate(self) -> None:
        with self._lock:
            self._access = None


class LabelStudioClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        if not base_url:
            raise LabelStudioError("LABEL_STUDIO_URL is not set: the backend cannot reach Label Studio")
        self.base_url = base_url.rstrip("/")
        self.auth = LabelStudioAuth(self.base_url, api_key)
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc.lower()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        extra_headers = kwargs.pop("headers", {})
        for attempt in (1, 2):
            try:
                response = self.http.request(method, url, headers={**self.auth.header(), **extra_headers}, **kwargs)
            except httpx.HTTPError as exc:
                raise LabelStudioError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
            if response.status_code == 401 and self.auth.is_pat and attempt == 1:
                self.auth.invalidate()  # the access token may have expired early
                continue
            break
        if response.status_code >= 400:
            raise LabelStudioError(f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}", response.status_code)
        return response

    def get_json(self, path: str, **params) -> object:
        return self.request("GET", path, params=params or None).json()

    def iter_tasks(self, project: int, page_size: int = 100, fields: str = "all") -> Iterator[dict]:
        """Every task of a project, page by page."""
        page = 1
        while True:
            try:
                body = self.get_json("/api/tasks", project=project, page=page, page_size=page_size, fields=fields)
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:
                    return  # past the last page
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            total = body.get("total") if isinstance(body, dict) else None
            if not tasks or (total is not None and page * page_size >= total):
                return
            page += 1

    def task(self, task_id: int) -> dict:
        return self.get_json(f"/api/tasks/{task_id}")

    def annotations(self, task_id: int) -> list[dict]:
        return self.get_json(f"/api/tasks/{task_id}/annotations/")

    def annotation(self, annotation_id: int) -> dict:
        return self.get_json(f"/api/annotations/{annotation_id}/")

    def predictions(self, task_id: int) -> list[dict]:
        return self.get_json("/api/predictions/", task=task_id)

    def create_prediction(self, task_id: int, prediction: dict) -> dict:
        body = {"task": task_id, "result": prediction["result"], "score": prediction.get("score"), "model_version": prediction["model_version"]}
        return self.request("POST", "/api/predictions/", json=body).json()

    def delete_prediction(self, prediction_id: int) -> None:
        self.request("DELETE", f"/api/predictions/{prediction_id}/")

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        self.request("POST", f"/api/projects/{project}/import/predictions", json=predictions)

    def set_project_model_version(self, project: int, model_version: str) -> None:
        self.request("PATCH", f"/api/projects/{project}/", json={"model_version": model_version})
