"""Bounded cost before anything is parsed: the credentials are checked from the headers, then the body is read up
to its size limit, and only then does the app see the request (FastAPI parses bodies before its auth dependency
runs, so unauthenticated junk was parsed in full and answered 422).

/health and / are open. /webhook is open unless SEGGPT_WEBHOOK_SECRET is set (Label Studio sends webhooks without
Basic auth); its body is a hint with a smaller limit. Every other path needs Basic auth when it is configured.
"""

from __future__ import annotations

import json

from .dependencies import basic_auth_ok, webhook_auth_ok
from .settings import Settings

__all__ = ["RequestGuard", "OPEN_PATHS"]

OPEN_PATHS = ("/health", "/")


class RequestGuard:
    """Pure ASGI middleware (it must not read the body before the checks, which BaseHTTPMiddleware would)."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        # A refusal before the body is read closes the connection: otherwise the server would go on receiving (and
        # discarding) the whole body on its event loop, which a flood of large bodies turns into CPU taken from /health.
        unread = {"connection": "close"} if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers else {}
        if path == "/webhook":
            limit = self.settings.max_webhook_bytes
            if not webhook_auth_ok(self.settings, headers):
                await _answer(send, 401, "webhook refused: the X-Seggpt-Webhook-Secret header (SEGGPT_WEBHOOK_SECRET) or Basic auth is required", unread)
                return
        else:
            limit = self.settings.max_body_bytes
            if path not in OPEN_PATHS and not basic_auth_ok(self.settings, headers.get("authorization")):
                await _answer(send, 401, "HTTP Basic auth required", {"www-authenticate": 'Basic realm="seggpt-ls"', **unread})
                return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _answer(send, 413, _too_large(path, limit), unread)
            return
        # Read what there is up to the limit (a chunked body has no declared length), then hand it on.
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            size += len(message.get("body", b""))
            if size > limit:
                await _answer(send, 413, _too_large(path, limit), {"connection": "close"})
                return
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


def _too_large(path: str, limit: int) -> str:
    setting = "SEGGPT_MAX_WEBHOOK_BYTES" if path == "/webhook" else "SEGGPT_MAX_BODY_BYTES"
    return f"request body larger than {limit} bytes ({setting})"


async def _answer(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
