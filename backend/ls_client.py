"""A small Label Studio API client: auth (legacy token or personal access token), the few endpoints we use.

httpx directly rather than the SDK client: the same authenticated session must also fetch media with our own
host checks, size limits and redirect policy, which the SDK client does not offer.

Every request to Label Studio (API calls, the token refresh, media on the Label Studio host) goes through
`LabelStudioClient.send`, one policy: a 429 waits what its Retry-After says, a 5xx or a lost connection waits a
jittered exponential backoff, and all of it fits in one total deadline (SEGGPT_LS_DEADLINE). Past it, or on a
401/403 (`LabelStudioAuthError`), the caller gets one line naming Label Studio, the URL and the status.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

import httpx

from worker import SystemFault

__all__ = ["LabelStudioAuth", "LabelStudioAuthError", "LabelStudioClient", "LabelStudioError", "RetryPolicy", "is_personal_access_token"]

log = logging.getLogger(__name__)

# The data manager's query for tasks holding an annotation that was not cancelled (Label Studio 1.23.2 reads
# `query` on /api/tasks; tests/test_e2e_bootstrap.py checks it against the real server).
ANNOTATED_ONLY = {"filters": {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]}}


class LabelStudioError(SystemFault):
    """Label Studio answered with an error, an unreadable body, or could not be reached. The message is one line
    naming Label Studio, the URL and the status; it never holds the token. A system fault for a worker: the
    policy below already did the retrying, so a task that meets it fails unstored, for a later run."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None, exhausted: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.exhausted = exhausted  # the retry policy already spent its deadline on it

    @property
    def transient(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


class LabelStudioAuthError(LabelStudioError):
    """Label Studio answered 401 or 403: the token is wrong, revoked or lacks the rights. A configuration fault:
    every call fails the same way until an operator fixes it, so nothing is stored and nothing is retried here."""

    @property
    def transient(self) -> bool:
        return False


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


def _shown(url: str) -> str:
    """A URL as it may appear in a message: without user info, and short."""
    parts = urlsplit(url)
    shown = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
    return shown if len(shown) <= 160 else shown[:157] + "..."


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How long every call to Label Studio may take in all (`deadline`, seconds), and how it waits between tries."""

    deadline: float = 60.0
    first_delay: float = 0.5
    max_delay: float = 10.0
    pause_after_give_up: float = 15.0  # calls in this window fail at once: a chunk meets one deadline, not one per task

    def backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter (half to all of it): workers that failed together do not retry together."""
        delay = min(self.max_delay, self.first_delay * 2 ** max(0, attempt - 1))
        return delay * (0.5 + random.random() / 2)


class LabelStudioAuth:
    """Builds the Authorization header. A PAT is exchanged at /api/token/refresh/ for a short-lived access
    token, refreshed a minute before it expires. The key itself is never logged."""

    def __init__(self, base_url: str, api_key: str, refresh=None) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        # how the refresh request is sent (the client's policy); plain httpx where no client is around
        self._post = refresh or (lambda url, body: httpx.post(url, json=body, timeout=15))

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
        url = f"{self.base_url}/api/token/refresh/"
        try:
            response = self._post(url, {"refresh": self._key})
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"Label Studio at {_shown(url)} cannot be reached to refresh the access token: {type(exc).__name__}", None, url) from None
        if response.status_code in (400, 401, 403):
            raise LabelStudioAuthError(f"Label Studio rejects the token: POST {_shown(url)} answered HTTP {response.status_code} "
                                       "(check LABEL_STUDIO_API_KEY: the personal access token is wrong, expired or revoked)", response.status_code, url)
        if response.status_code != 200:
            raise LabelStudioError(f"Label Studio at POST {_shown(url)} answered HTTP {response.status_code} to the token refresh", response.status_code, url)
        try:
            self._access = response.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise LabelStudioError(f"Label Studio at POST {_shown(url)} answered HTTP 200 without a readable access token", 200, url) from None
        self._expires = _jwt_expiry(self._access) or time.time() + 300

    def invalidate(self) -> None:
        with self._lock:
            self._access = None


class LabelStudioClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0, policy: RetryPolicy | None = None) -> None:
        if not base_url:
            raise LabelStudioError("LABEL_STUDIO_URL is not set: the backend cannot reach Label Studio")
        self.base_url = base_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)
        self.auth = LabelStudioAuth(self.base_url, api_key, refresh=self._post_refresh)
        self._given_up: tuple[float, LabelStudioError] | None = None  # (until when, the error) after a give-up

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc.lower()

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base_url}{path}"

    def _post_refresh(self, url: str, body: dict) -> httpx.Response:
        return self.send("POST", url, json=body, authenticate=False, idempotent=True)

    def send(self, method: str, path: str, *, stream: bool = False, authenticate: bool = True, idempotent: bool | None = None,
             **kwargs) -> httpx.Response:
        """One request under the policy. Returns any answer below 400 but 429 and 5xx, and any other 4xx but 401/403
        (the caller decides what a 404 means); raises LabelStudioAuthError on 401/403 and LabelStudioError once
        the deadline leaves no time for another try. With `stream`, the caller reads and closes the answer.
        A POST is sent again only when Label Studio cannot have acted on it (429, 502-504, no connection): a 500 or
        a lost answer may hide a stored prediction, and the sink's own check decides then."""
        url = self.url(path)
        if idempotent is None:
            idempotent = method.upper() != "POST"
        where = f"{method} {_shown(str(httpx.URL(url, params=kwargs['params'])) if kwargs.get('params') else url)}"
        if self._given_up is not None and time.monotonic() < self._given_up[0]:
            raise self._given_up[1]
        extra_headers = kwargs.pop("headers", None) or {}
        started = time.monotonic()
        attempt, refreshed = 0, False
        while True:
            attempt += 1
            remaining = self.policy.deadline - (time.monotonic() - started)
            retry_after = None
            try:
                headers = {**(self.auth.header() if authenticate else {}), **extra_headers}
                request = self.http.build_request(method, url, headers=headers, timeout=max(0.1, min(self.timeout, remaining)), **kwargs)
                response = self.http.send(request, stream=stream)
            except LabelStudioError:
                raise  # the token refresh was refused, or gave up under this same policy
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}" + (f": {_one_line(str(exc), 80)}" if str(exc) else "")
                if not idempotent and not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                    raise LabelStudioError(f"Label Studio gave no answer to {where}: {last}", None, url) from None
            else:
                status = response.status_code
                if status == 401 and authenticate and self.auth.is_pat and not refreshed:
                    response.close()
                    refreshed = True
                    self.auth.invalidate()  # the access token may have expired early: one fresh one
                    continue
                if status in (401, 403) and authenticate:
                    response.close()
                    raise LabelStudioAuthError(f"Label Studio rejects the token: {where} answered HTTP {status} "
                                               "(check LABEL_STUDIO_API_KEY and that its user may access the project)", status, url)
                if status != 429 and status < 500 or not idempotent and status not in (429, 502, 503, 504):
                    return response
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
                last = f"HTTP {status}" + (f" (Retry-After {response.headers['retry-after']})" if "retry-after" in response.headers else "")
                response.close()
            elapsed = time.monotonic() - started
            wait = retry_after if retry_after is not None else self.policy.backoff(attempt)
            if elapsed + wait >= self.policy.deadline:
                status = int(last.split()[1]) if last.startswith("HTTP ") else None
                error = LabelStudioError(f"Label Studio gave no usable answer: {where}: {last}, {attempt} attempt(s) in {elapsed:.1f} s; "
                                         f"gave up (SEGGPT_LS_DEADLINE {self.policy.deadline:g} s)", status, url, exhausted=True)
                log.warning("%s", error)
                self._given_up = (time.monotonic() + self.policy.pause_after_give_up, error)
                raise error
            log.info("Label Studio: %s: %s; retrying in %.1f s (attempt %d)", where, last, wait, attempt + 1)
            time.sleep(wait)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """`send`, with every error status it returns (4xx, a POST's 500) raised as one line."""
        response = self.send(method, path, **kwargs)
        if response.status_code >= 400:
            raise LabelStudioError(f"Label Studio answered HTTP {response.status_code} to {method} {_shown(str(response.request.url))}: "
                                   f"{_one_line(response.text, 200)}", response.status_code, self.url(path))
        return response

    @staticmethod
    def json_of(response: httpx.Response, method: str = "GET") -> object:
        """The answer's JSON, or one line saying it is not JSON (a proxy's error page, a cut-off body)."""
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(f"Label Studio answered {method} {_shown(str(response.request.url))} with malformed JSON "
                                   f"(HTTP {response.status_code}, {len(response.content)} bytes: {_one_line(response.text, 60)!r})",
                                   response.status_code, str(response.request.url)) from None

    def get_json(self, path: str, **params) -> object:
        return self.json_of(self.request("GET", path, params=params or None))

    def iter_tasks(self, project: int, page_size: int = 100, fields: str = "all", annotated_only: bool = False) -> Iterator[dict]:
        """Every task of a project, page by page, each once. The list ends at its last page, and also (logged) at a
        page that brings no task not seen already, or after `total / page_size + 1` pages: a server whose pages
        never end cannot hold a bootstrap or a worker.

        `annotated_only`: the tasks with an annotation that was not cancelled (the data manager's filter on
        total_annotations), where the prompts come from. A server that ignores the filter lists every task: a
        caller must not take a task's presence here as proof that it is annotated."""
        query = {"query": json.dumps(ANNOTATED_ONLY)} if annotated_only else {}
        page, seen = 1, set()
        while True:
            try:
                body = self.get_json("/api/tasks", project=project, page=page, page_size=page_size, fields=fields, **query)
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:
                    return  # past the last page
                raise
            tasks = body.get("tasks", body.get("results")) if isinstance(body, dict) else body
            if not isinstance(tasks, list) or not all(isinstance(t, dict) and "id" in t for t in tasks):
                raise LabelStudioError(f"Label Studio answered GET {_shown(self.url('/api/tasks'))}?project={project}&page={page} "
                                       "with JSON that is not a task list", 200, self.url("/api/tasks"))
            fresh = [t for t in tasks if t["id"] not in seen]
            if tasks and not fresh:
                log.warning("Label Studio: project %s: page %d of the task list repeats tasks already read; the list ends "
                            "here (%d task(s))", project, page, len(seen))
                return
            seen.update(t["id"] for t in fresh)
            yield from fresh
            total = (body.get("total", body.get("count")) if isinstance(body, dict) else None)
            total = total if isinstance(total, int) else None
            more = isinstance(body, dict) and bool(body.get("next"))  # a server that links pages says there is more
            if not tasks or (isinstance(body, dict) and "next" in body and not more):
                return
            if total is not None and page * page_size >= total and not more:
                return  # the last page by its count
            if total is not None and page >= total // page_size + 1:
                log.warning("Label Studio: project %s: the task list goes past page %d although it counts %d task(s); it ends "
                            "here (%d task(s) read)", project, page, total, len(seen))
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
        return self.json_of(self.request("POST", "/api/predictions/", json=body), "POST")

    def delete_prediction(self, prediction_id: int) -> None:
        self.request("DELETE", f"/api/predictions/{prediction_id}/")

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        self.request("POST", f"/api/projects/{project}/import/predictions", json=predictions)

    def set_project_model_version(self, project: int, model_version: str) -> None:
        self.request("PATCH", f"/api/projects/{project}/", json={"model_version": model_version})
