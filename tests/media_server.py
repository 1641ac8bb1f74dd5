"""A local HTTP server for task images: files from a folder, with CORS, plus a few deliberately bad routes."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class MediaServer:
    """Serves `directory` at http://127.0.0.1:<port>/<name>. `/missing` answers 404, `/page.html` HTML,
    `/flaky` 503 until `flaky_failures` requests have been refused, `/trickle` a declared 100,000-byte image one
    byte every `trickle_interval` seconds (a host that never times out a read and never finishes)."""

    def __init__(self, directory: Path, flaky_failures: int = 0) -> None:
        self.directory = Path(directory)
        self.flaky_left = flaky_failures
        self.requests: list[str] = []
        self.request_times: list[tuple[float, str]] = []  # (monotonic time, path)
        self.trickle_interval = 0.2
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                server.requests.append(self.path)
                server.request_times.append((time.monotonic(), self.path))
                name = self.path.lstrip("/").split("?")[0]
                if name == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(100000):
                            self.wfile.write(b"\x89")
                            self.wfile.flush()
                            time.sleep(server.trickle_interval)
                    except OSError:
                        pass  # the client gave up
                    return
                if name == "page.html":
                    return self._send(200, b"<html>not an image</html>", "text/html")
                if name == "flaky":
                    if server.flaky_left > 0:
                        server.flaky_left -= 1
                        return self._send(503, b"busy", "text/plain")
                    name = "flaky.png"
                path = server.directory / name
                if not name or not path.is_file():
                    return self._send(404, b"not found", "text/plain")
                kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".tif": "image/tiff"}.get(path.suffix, "application/octet-stream")
                return self._send(200, path.read_bytes(), kind)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
