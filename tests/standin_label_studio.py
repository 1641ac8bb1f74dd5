"""A stand-in Label Studio the tests control, for the misbehaviour the real server cannot be made to show: 429 with
Retry-After, runs of 5xx, malformed JSON, endless pages, a rejected token on the API and on media.

`script(method, path_prefix, *answers)` queues answers for the requests whose path starts with the prefix; each
answer is used once, and the last one stays. An answer is `(status, body)` or `(status, body, headers)`; a body
that is not bytes or str is sent as JSON. Unscripted paths answer 404. Every request is recorded with its time.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

Answer = tuple  # (status, body) or (status, body, headers), or a callable(query) -> such a tuple


class StandInLabelStudio:
    def __init__(self) -> None:
        self.routes: list[tuple[str, str, list]] = []
        self.requests: list[tuple[float, str, str, str | None]] = []  # (time, method, path with query, Authorization)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                answer = server._take(self.command, self.path, self.headers.get("Authorization"))
                status, body, headers = (*answer, {})[:3] if len(answer) == 2 else answer
                if not isinstance(body, (bytes, str)):
                    body, headers = json.dumps(body), {"Content-Type": "application/json", **headers}
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        self.legacy_token = "0123456789abcdef0123456789abcdef01234567"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def script(self, method: str, prefix: str, *answers: Answer | Callable) -> None:
        with self.lock:
            self.routes.insert(0, (method, prefix, list(answers)))

    def _take(self, method: str, path: str, authorization: str | None) -> tuple:
        with self.lock:
            self.requests.append((time.monotonic(), method, path, authorization))
            for route_method, prefix, answers in self.routes:
                if route_method == method and urlsplit(path).path.startswith(prefix):
                    answer = answers.pop(0) if len(answers) > 1 else answers[0]
                    break
            else:
                return 404, {"detail": "Not found."}
        return answer(parse_qs(urlsplit(path).query)) if callable(answer) else answer

    def hits(self, method: str, prefix: str) -> list[tuple[float, str, str, str | None]]:
        with self.lock:
            return [r for r in self.requests if r[1] == method and urlsplit(r[2]).path.startswith(prefix)]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
