"""Settings reach the process that uses them: a worker's environment, a queued run's prediction options, the
histograms /metrics shows (issue 25's misconfigurations)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.cli import SAMPLES, main
from backend.metrics import render
from worker import EmbeddedRedis
from worker.metrics import HISTOGRAMS, observe

from .queue_helpers import start_worker, wait_for, worker_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    yield tmp_path / "data"
    EmbeddedRedis(tmp_path / "data" / "redis").stop()


def test_a_worker_takes_the_documented_variables_from_its_environment(model_dir, tmp_path):
    EmbeddedRedis(model_dir / "redis").connect()
    env = {"SEGGPT_PROMPT_CACHE_MB": "1", "SEGGPT_BATCH_ROWS": "3"}
    worker = start_worker(model_dir, "wiring", "--heartbeat-interval", "1", log=tmp_path / "w.log", env=env)
    status = [sys.executable, "-m", "backend.cli", "status", "--json", "--queue", "wiring"]
    try:
        def registered():
            out = subprocess.run(status, env=worker_env(model_dir), capture_output=True, text=True, timeout=60).stdout
            workers = [w for w in json.loads(out)["workers"] if "wiring" in w["queues"]]
            return workers if workers and workers[0]["device"] != "?" else None

        (entry,) = wait_for(registered, 90, interval=0.5, what="the worker to register")
        assert entry["prompt_cache_limit_bytes"] == 2**20
        assert entry["max_batch_rows"] == 3
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_worker_refuses_prediction_flags_it_would_ignore(model_dir):
    for flag in (["--score", "agreement"], ["--embedding-type", "semantic"]):
        result = subprocess.run([sys.executable, "-m", "backend.cli", "worker", "--burst", *flag], env=worker_env(model_dir),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "unrecognized arguments" in result.stderr and flag[0] in result.stderr


def _scores(out: Path) -> dict:
    return {image: {label: entry["score"] for label, entry in doc["labels"].items()}
            for image, doc in json.loads((out / "results.json").read_text())["images"].items()}


def test_a_queued_segment_run_keeps_the_agreement_score(tmp_path, model_dir):
    prompts = ["--prompt", f"{SAMPLES / 'prompt.png'}:{SAMPLES / 'prompt_dotted.png'}:dotted"]
    common = ["segment", "--weights", "tiny-appearance", "--device", "cpu", "--images", str(SAMPLES), *prompts]
    assert main([*common, "--score", "agreement", "--out", str(tmp_path / "queued")]) == 0
    assert main([*common, "--no-queue", "--score", "agreement", "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--no-queue", "--out", str(tmp_path / "crisp")]) == 0
    queued, local, crisp = (_scores(tmp_path / name) for name in ("queued", "local", "crisp"))
    assert queued.keys() == local.keys() and len(queued) == len(list(SAMPLES.glob("*.png")))
    for image in queued:
        assert queued[image]["dotted"] == pytest.approx(local[image]["dotted"], abs=1e-3), image
    # the two scores differ, so equality above means the queue ran the agreement score
    assert any(abs(local[i]["dotted"] - crisp[i]["dotted"]) > 1e-3 for i in local)


def test_every_observed_histogram_is_exported(model_dir):
    observed = set()
    for path in [*ROOT.glob("backend/**/*.py"), *ROOT.glob("worker/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "observe" \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                observed.add(node.args[1].value)
    assert "interactive_request_seconds" in observed
    assert observed <= set(HISTOGRAMS), observed - set(HISTOGRAMS)
    connection = EmbeddedRedis(model_dir / "redis").connect()
    observe(connection, "interactive_request_seconds", 0.3)
    text = render(connection, {})
    assert 'seggpt_interactive_request_seconds_bucket{le="0.5"} 1.0' in text
