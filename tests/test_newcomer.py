"""A newcomer's path: weights that cannot load are named in one line by /health, /setup and the CLI (no traceback);
a Label Studio older than the oldest supported release is refused at /setup with a message that says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend import ls_version
from backend.app import create_app
from backend.settings import Settings
from worker import EmbeddedRedis

RECORDED = Path(__file__).parent / "recorded"
SETUP = json.loads((RECORDED / "setup.json").read_text())["body"]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("newcomer") / "redis")
    server.connect()
    yield server.url
    server.stop()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A machine without the Hugging Face hub and nothing in its cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _says_what_to_do(line: str) -> None:
    assert "\n" not in line and len(line) < 600, line
    for needed in ("SEGGPT_WEIGHTS", "BAAI/seggpt-vit-large", "local directory", "tiny-appearance"):
        assert needed in line, (needed, line)


def test_health_is_not_up_while_no_worker_can_load_the_weights(redis_url, offline_hub):
    settings = Settings(weights="BAAI/seggpt-vit-large", redis_url=redis_url)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "DOWN"
        _says_what_to_do(health.json()["reason"])
        setup = client.post("/setup", json=SETUP)
        assert setup.status_code == 503
        _says_what_to_do(setup.json()["detail"])
    with TestClient(create_app(settings.with_(weights="tiny-appearance"))) as client:
        assert client.get("/health").json() == {"status": "UP", "model_class": "SegGPT", "model_dir": None}


def test_cli_commands_say_it_in_one_line(tmp_path, offline_hub):
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "model"), "SEGGPT_WEIGHTS": "BAAI/seggpt-vit-large"}
    env.pop("REDIS_URL", None)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(images / "a.png")
    Image.new("L", (32, 32)).save(tmp_path / "mask.png")
    for argv in (["worker", "--burst", "--weights", "BAAI/seggpt-vit-large"],
                 ["segment", "--no-queue", "--weights", "BAAI/seggpt-vit-large", "--prompt", f"{images / 'a.png'}:{tmp_path / 'mask.png'}:x",
                  "--images", str(images), "--out", str(tmp_path / "out")]):
        result = subprocess.run([sys.executable, "-m", "backend.cli", *argv], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, result.stderr[-2000:]
        _says_what_to_do(errors[0])


class _StandIn:
    """A stand-in Label Studio that reports `release` at /api/version (versions we cannot install here)."""

    def __init__(self, release: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps({"release": release}).encode() if self.path == "/api/version" else b"{}"
                self.send_response(200 if self.path == "/api/version" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("release,refused", [("1.19.0", True), (ls_version.MIN_LABEL_STUDIO, False), ("1.23.2", False)])
def test_setup_refuses_a_label_studio_older_than_the_oldest_supported(redis_url, release, refused):
    stand_in = _StandIn(release)
    try:
        settings = Settings(weights="random:tiny", redis_url=redis_url, label_studio_url=stand_in.url, label_studio_api_key="t")
        with TestClient(create_app(settings)) as client:
            response = client.post("/setup", json=SETUP)
    finally:
        stand_in.stop()
    if refused:
        assert response.status_code == 400
        assert response.json()["detail"] == (
            f"Label Studio {release} at {stand_in.url} is older than {ls_version.MIN_LABEL_STUDIO}, the oldest release this "
            "backend works with (docs/deployment.md): upgrade Label Studio (pip install -U label-studio)")
    else:
        assert response.status_code == 200 and response.json()["model_version"].startswith("seggpt-")


def test_release_parsing():
    assert ls_version.parse_release("1.23.2") == (1, 23, 2)
    assert ls_version.parse_release("1.20.0.dev12") == (1, 20, 0)
    assert ls_version.parse_release("") is None
