"""Fetching task images: Label Studio paths, cloud URIs through its presign endpoint, and allowed http(s) hosts.

Fault classes: only the image itself (not found, not an image, too large, a forbidden host) is a `MediaError`, a
final empty result. The Label Studio host is asked through the client's retry policy; its 401/403 raises
`LabelStudioAuthError` and its give-up `LabelStudioError`, both system faults that store nothing.

Only the Label Studio host and the hosts in ALLOWED_MEDIA_HOSTS are ever contacted (any other address is
refused, loopback and private ranges included). The Label Studio credentials are sent to the Label Studio host
only. Every fetch has a timeout, a size limit and a content-type check; every redirect hop is checked again.
"""

from __future__ import annotations

import base64
import time
from typing import Sequence
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx

from worker import TaskInputError, TransientError

from .ls_client import LabelStudioClient

__all__ = ["MediaError", "MediaFetcher"]

LS_PREFIXES = ("/data/", "/storage-data/", "/tasks/")
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
_ACCEPTED_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


class MediaError(TaskInputError):
    """An image that cannot be fetched and will not be on a retry: refused host, 404, not an image, too big."""


class MediaFetcher:
    def __init__(
        self,
        client: LabelStudioClient | None,
        allowed_hosts: Sequence[str] = (),
        max_bytes: int = 64 * 2**20,
        timeout: float = 30.0,
    ) -> None:
        self.client = client
        self.allowed = {h.lower() for h in allowed_hosts}
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)

    def _host_allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        netloc = parts.netloc.lower().rsplit("@", 1)[-1]
        if self.client is not None and netloc == self.client.host:
            return True
        return netloc in self.allowed or parts.hostname.lower() in self.allowed

    def resolve(self, value: str, task_id: int | None = None) -> tuple[str, bool]:
        """(absolute URL, whether it is a presign URL) for a task's raw image value."""
        if not isinstance(value, str) or not value:
            raise MediaError(f"task {task_id}: image value {value!r} is not a URL")
        if value.startswith(LS_PREFIXES):
            # the prefix counts only for a path that stays under it once decoded and normalised (the HTTP client removes
            # dot segments): "/data/../api/current-user/whoami" would reach the API with the token
            if ".." in unquote(value.split("?", 1)[0]).replace("\\", "/").split("/"):
                raise MediaError(f"task {task_id}: {value[:80]!r} leaves Label Studio's media paths")
            if self.client is None:
                raise MediaError(f"task {task_id}: {value} is a Label Studio path but LABEL_STUDIO_URL is not set")
            return self.client.base_url + value, False
        if value.startswith(CLOUD_SCHEMES):
            if self.client is None or task_id is None:
                raise MediaError(f"task {task_id}: {value.split('://')[0]} URIs need LABEL_STUDIO_URL (presigned through Label Studio)")
            encoded = base64.urlsafe_b64encode(value.encode()).decode()
            return f"{self.client.base_url}/tasks/{task_id}/presign/?fileuri={quote(encoded)}", True
        if value.startswith(("http://", "https://")):
            return value, False
        raise MediaError(f"task {task_id}: unsupported image URL {value[:80]!r} (expected http(s), /data/..., s3://, gs://, azure-blob://)")

    def fetch(self, value: str, task_id: int | None = None) -> bytes:
        """The image bytes for a task's raw image value. MediaError if refused for good, TransientError if a
        retry may succeed (network trouble, timeouts, 5xx, 429)."""
        url, _ = self.resolve(value, task_id)
        where = f"task {task_id}" if task_id is not None else "image"
        # One deadline for the whole fetch, redirects included: a per-read timeout alone let a host sending a byte
        # a second hold a worker for minutes. Each read waits at most what is left of it.
        deadline = time.monotonic() + self.timeout
        for _ in range(6):
            # the presign answer (a redirect from Label Studio) names the cloud storage: its host is checked like any
            # other, so cloud storage hosts belong in ALLOWED_MEDIA_HOSTS
            if not self._host_allowed(url):
                host = urlsplit(url).netloc or url[:60]
                raise MediaError(f"{where}: host {host} is not allowed (Label Studio host or ALLOWED_MEDIA_HOSTS only)")
            to_label_studio = self._is_label_studio(url)
            left = deadline - time.monotonic()
            if left <= 0:
                raise MediaError(f"{where}: fetching {value[:80]} took longer than SEGGPT_MEDIA_TIMEOUT ({self.timeout:g} s)")
            try:
                # the Label Studio host: its token, under the client's policy (429, 5xx, deadline; 401/403 is a
                # configuration fault, LabelStudioAuthError, never the image's)
                if to_label_studio:
                    response = self.client.send("GET", url, stream=True)
                else:
                    response = self.http.send(self.http.build_request("GET", url, timeout=left), stream=True)
                try:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    return self._read(response, where, value, deadline)
                finally:
                    response.close()
            except httpx.TimeoutException:
                raise TransientError(f"{where}: timed out fetching {value[:80]}") from None
            except httpx.TransportError as exc:
                raise TransientError(f"{where}: cannot fetch {value[:80]}: {type(exc).__name__}") from None
        raise MediaError(f"{where}: too many redirects for {value[:80]}")

    def _is_label_studio(self, url: str) -> bool:
        return self.client is not None and urlsplit(url).netloc.lower().rsplit("@", 1)[-1] == self.client.host

    def _read(self, response: httpx.Response, where: str, value: str, deadline: float) -> bytes:
        status = response.status_code
        if status >= 500 or status == 429:
            raise TransientError(f"{where}: HTTP {status} fetching {value[:80]}")
        if status >= 400:
            raise MediaError(f"{where}: HTTP {status} fetching {value[:80]}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith(_ACCEPTED_TYPES):
            raise MediaError(f"{where}: {value[:80]} is {content_type}, not an image")
        declared = int(response.headers.get("content-length") or 0)
        if declared > self.max_bytes:
            raise MediaError(f"{where}: {value[:80]} is {declared} bytes, more than the limit {self.max_bytes}")
        chunks, total = [], 0
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                # still sending when the time is up: a trickling host, which a retry would only wait on again
                raise MediaError(f"{where}: {value[:80]} sent {total} bytes in SEGGPT_MEDIA_TIMEOUT ({self.timeout:g} s), "
                                 f"too slow; given up (final)")
            total += len(chunk)
            if total > self.max_bytes:
                raise MediaError(f"{where}: {value[:80]} exceeds the limit of {self.max_bytes} bytes")
            chunks.append(chunk)
        if total == 0:
            raise MediaError(f"{where}: {value[:80]} is empty")
        return b"".join(chunks)
