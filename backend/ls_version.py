"""The oldest Label Studio this backend works with, and the check `/setup` makes against the one that calls it.

Label Studio reports its release at `/api/version`. The oldest release that passes the contract tests is measured by
bench/ls_versions.sh (docs/deployment.md); an older one is refused at `/setup` with a message that says so, rather
than failing later in ways that name nothing.
"""

from __future__ import annotations

import re
import time

import httpx

__all__ = ["MIN_LABEL_STUDIO", "LabelStudioTooOld", "parse_release", "too_old_reason"]

MIN_LABEL_STUDIO = "1.20.0"
_CHECK_EVERY = 600.0  # seconds a version read is trusted: an upgrade shows within this
_seen: dict[str, tuple[float, str | None]] = {}


class LabelStudioTooOld(RuntimeError):
    """The Label Studio that calls `/setup` is older than `MIN_LABEL_STUDIO` (answered 400, see `http_errors`)."""


def parse_release(text: str) -> tuple[int, ...] | None:
    """(1, 23, 2) from "1.23.2" or "1.23.2.dev0"; None when it is no version."""
    match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(part or 0) for part in match.groups()) if match else None


def _release(url: str, token: str, timeout: float) -> str | None:
    headers = {"Authorization": f"Token {token}"} if token else {}
    try:
        response = httpx.get(f"{url}/api/version", headers=headers, timeout=timeout)
        return str(response.json().get("release") or "") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None  # unreachable or odd: other checks report Label Studio's faults; this one only refuses old releases


def too_old_reason(url: str, token: str = "", timeout: float = 2.0) -> str | None:
    """Why the Label Studio at `url` is too old for this backend, in one line; None when it is new enough or its
    version cannot be read. Remembered per URL for a while: `/setup` must answer within Label Studio's 3 s."""
    if not url:
        return None
    now = time.monotonic()
    if url in _seen and now - _seen[url][0] < _CHECK_EVERY:
        return _seen[url][1]
    release = _release(url, token, timeout)
    parsed = parse_release(release or "")
    reason = None
    if parsed is not None and parsed < parse_release(MIN_LABEL_STUDIO):
        reason = (f"Label Studio {release} at {url} is older than {MIN_LABEL_STUDIO}, the oldest release this backend "
                  f"works with (docs/deployment.md): upgrade Label Studio (pip install -U label-studio)")
    if release is not None:
        _seen[url] = (now, reason)
    return reason
