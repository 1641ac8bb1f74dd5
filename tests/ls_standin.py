"""A stand-in Label Studio API that a test controls, for what the real server cannot be made to do on demand. The
real server stays the judge of the protocol (tests/test_e2e_*.py).

- State: its projects, tasks, annotations and predictions are plain dicts, served as the API serves them (forged
  events against a known state, tasks deleted between two reads, a presign answer pointing anywhere).
- Scripts: `script(method, path_prefix, *answers)` queues answers for the requests whose path starts with the prefix,
  ahead of the state: each answer is used once, and the last one stays. An answer is `(status, body)` or `(status,
  body, headers)`, or a callable(query) giving one or None (served from the state); a body that is not bytes or str is sent as JSON (429 with
  Retry-After, runs of 5xx, malformed JSON, endless pages, a rejected token on the API and on media).

Every request is logged with its time and its Authorization header; `watchers` see each one as it arrives.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

Answer = tuple  # (status, body) or (status, body, headers), or a callable(query) -> such a tuple


class StandInLabelStudio:
    def __init__(self, media_dir: Path | None = None) -> None:
        self.projects: dict[int, dict] = {}
        self.tasks: dict[int, dict] = {}
        self.annotations: dict[int, list[dict]] = {}
        self.predictions: list[dict] = []
        self.presign_target = ""  # where /tasks/N/presign/ redirects
        self.filters = True  # False: the task list ignores the data manager's filters, as an older server might
        self.media_dir = media_dir
        self.log: list[tuple[float, str, str, str | None]] = []  # (monotonic time, method, path with query, Authorization)
        self.routes: list[tuple[str, str, list]] = []
        self.watchers: list[Callable[[str, str], None]] = []  # called with (method, path) as a request arrives
        self.legacy_token = "0123456789abcdef0123456789abcdef01234567"
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _scripted(self) -> bool:
                """Answer from a script, if one matches (the request is logged either way)."""
                with server._lock:
                    server.log.append((time.monotonic(), self.command, self.path, self.headers.get("Authorization")))
                    answer = server._scripted_answer(self.command, self.path)
                for watcher in list(server.watchers):  # what the system under test did before this request
                    watcher(self.command, self.path)
                if callable(answer):
                    answer = answer(parse_qs(urlsplit(self.path).query))  # None: this one is served from the state
                if answer is None:
                    return False
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
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
                return True

            def _send(self, status: int, body: object = None, headers: dict | None = None, raw: bytes | None = None) -> None:
                data = b"" if status == 204 else raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if raw is None else "image/png")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> tuple[str, list[str], dict]:
                parts = urlsplit(self.path)
                return parts.path, [p for p in parts.path.split("/") if p], parse_qs(parts.query)

            def do_GET(self) -> None:
                if self._scripted():
                    return None
                path, segments, query = self._record()
                if path.startswith("/data/") and server.media_dir is not None:
                    file = server.media_dir / segments[-1]
                    return self._send(200, raw=file.read_bytes()) if file.is_file() else self._send(404, {"detail": "no file"})
                if segments[:1] == ["tasks"] and segments[-1:] == ["presign"]:
                    return self._send(302, {}, {"Location": server.presign_target})
                if segments[:2] == ["api", "projects"] and len(segments) == 3:
                    project = server.projects.get(int(segments[2]))
                    return self._send(200, project) if project else self._send(404, {"detail": "Not found."})
                if segments == ["api", "tasks"]:
                    project = int(query["project"][0])
                    page, size = int(query.get("page", ["1"])[0]), int(query.get("page_size", ["100"])[0])
                    tasks = [server.full_task(t) for t in sorted(server.tasks) if server.tasks[t]["project"] == project]
                    if "query" in query:  # the data manager's selection: {"selectedItems": {"all": false, "included": [...]}}
                        prepared = json.loads(query["query"][0])
                        selected = prepared.get("selectedItems", {"all": True})
                        if not selected.get("all", True):
                            tasks = [t for t in tasks if t["id"] in selected.get("included", [])]
                        for item in (prepared.get("filters") or {}).get("items", []) if server.filters else []:
                            # the one filter the backend sends (ls_client.ANNOTATED_ONLY), as Label Studio 1.23.2 applies it
                            assert (item["filter"], item["operator"], item["value"]) == ("filter:tasks:total_annotations", "greater", 0), item
                            tasks = [t for t in tasks if t["total_annotations"] > 0]
                    return self._send(200, {"tasks": tasks[(page - 1) * size: page * size], "total": len(tasks)})
                if segments[:2] == ["api", "tasks"] and len(segments) == 3:
                    task = server.tasks.get(int(segments[2]))
                    return self._send(200, task) if task else self._send(404, {"detail": "Not found."})
                if segments[:2] == ["api", "tasks"] and segments[3:] == ["annotations"]:
                    task_id = int(segments[2])
                    if task_id not in server.tasks:
                        return self._send(404, {"detail": "Not found."})
                    return self._send(200, server.annotations.get(task_id, []))
                if segments == ["api", "predictions"]:
                    task = int(query.get("task", ["0"])[0])
                    return self._send(200, [p for p in server.predictions if p.get("task") == task])
                return self._send(404, {"detail": "Not found."})

            def _body(self) -> object:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"null")

            def do_POST(self) -> None:
                if self._scripted():
                    return None
                path, segments, _ = self._record()
                body = self._body()
                if segments == ["api", "predictions"]:
                    with server._lock:
                        server.predictions.append({**body, "id": len(server.predictions) + 1})
                    return self._send(201, server.predictions[-1])
                if segments[:2] == ["api", "projects"] and segments[3:] == ["import", "predictions"]:
                    with server._lock:
                        for item in body:
                            server.predictions.append({**item, "id": len(server.predictions) + 1})
                    return self._send(201, {"created": len(body)})
                return self._send(404, {"detail": "Not found."})

            def do_PATCH(self) -> None:
                if self._scripted():
                    return None
                self._body()
                return self._send(200, {})

            def do_DELETE(self) -> None:
                if self._scripted():
                    return None
                return self._send(204, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def full_task(self, task_id: int) -> dict:
        """A task as the task list gives it (fields=all): with its annotations and predictions."""
        annotations = self.annotations.get(task_id, [])
        return {**self.tasks[task_id], "annotations": annotations, "total_annotations": sum(not a.get("was_cancelled") for a in annotations),
                "predictions": [p for p in self.predictions if p.get("task") == task_id]}

    def add_task(self, project: int, task_id: int, image: str, annotation: list[dict] | None = None) -> None:
        self.tasks[task_id] = {"id": task_id, "project": project, "data": {"image": image}}
        if annotation is not None:
            self.annotations[task_id] = [{"id": task_id * 10, "task": task_id, "result": annotation, "was_cancelled": False,
                                          "updated_at": f"2026-01-01T00:00:{task_id % 60:02d}Z"}]

    def script(self, method: str, prefix: str, *answers: Answer | Callable) -> None:
        """Answer `method` requests whose path starts with `prefix` with `answers`, in turn (the last one stays)."""
        with self._lock:
            self.routes.insert(0, (method, prefix, list(answers)))

    def _scripted_answer(self, method: str, path: str) -> Answer | Callable | None:
        for route_method, prefix, answers in self.routes:
            if route_method == method and urlsplit(path).path.startswith(prefix):
                return answers.pop(0) if len(answers) > 1 else answers[0]
        return None

    def requests(self, method: str = "GET", prefix: str = "") -> list[str]:
        """The paths (with their queries) of the `method` requests that start with `prefix`."""
        with self._lock:
            return [path for _, m, path, _ in self.log if m == method and path.startswith(prefix)]

    def hits(self, method: str, prefix: str) -> list[tuple[float, str, str, str | None]]:
        """The log records of the `method` requests whose path (without its query) starts with `prefix`."""
        with self._lock:
            return [r for r in self.log if r[1] == method and urlsplit(r[2]).path.startswith(prefix)]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
