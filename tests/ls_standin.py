"""A stand-in Label Studio API that a test controls: its projects, tasks and annotations are plain dicts, and every
request is logged with its time. For what the real server cannot be made to do on demand (forged events against a
known state, tasks deleted between two reads, a presign answer pointing anywhere). The real server stays the judge
of the protocol (tests/test_e2e_*.py)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


class StandInLabelStudio:
    def __init__(self, media_dir: Path | None = None) -> None:
        self.projects: dict[int, dict] = {}
        self.tasks: dict[int, dict] = {}
        self.annotations: dict[int, list[dict]] = {}
        self.predictions: list[dict] = []
        self.presign_target = ""  # where /tasks/N/presign/ redirects
        self.media_dir = media_dir
        self.log: list[tuple[float, str, str]] = []  # (monotonic time, method, path with query)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: object = None, headers: dict | None = None, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if raw is None else "image/png")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> tuple[str, list[str], dict]:
                with server._lock:
                    server.log.append((time.monotonic(), self.command, self.path))
                parts = urlsplit(self.path)
                return parts.path, [p for p in parts.path.split("/") if p], parse_qs(parts.query)

            def do_GET(self) -> None:
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
                        selected = json.loads(query["query"][0]).get("selectedItems", {"all": True})
                        if not selected.get("all", True):
                            tasks = [t for t in tasks if t["id"] in selected.get("included", [])]
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
                self._record()
                self._body()
                return self._send(200, {})

            def do_DELETE(self) -> None:
                self._record()
                return self._send(204, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def full_task(self, task_id: int) -> dict:
        """A task as the task list gives it (fields=all): with its annotations and predictions."""
        return {**self.tasks[task_id], "annotations": self.annotations.get(task_id, []),
                "predictions": [p for p in self.predictions if p.get("task") == task_id]}

    def add_task(self, project: int, task_id: int, image: str, annotation: list[dict] | None = None) -> None:
        self.tasks[task_id] = {"id": task_id, "project": project, "data": {"image": image}}
        if annotation is not None:
            self.annotations[task_id] = [{"id": task_id * 10, "task": task_id, "result": annotation, "was_cancelled": False,
                                          "updated_at": f"2026-01-01T00:00:{task_id % 60:02d}Z"}]

    def requests(self, method: str = "GET", prefix: str = "") -> list[str]:
        with self._lock:
            return [path for _, m, path in self.log if m == method and path.startswith(prefix)]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
