"""Inference never imports research code (synthetic episodes, training, evaluation); the web process never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_inference_modules_import_no_research_code():
    code = (
        "import sys\n"
        "import seggpt_core.predictor, seggpt_core.model, seggpt_core.weights, seggpt_core.transforms\n"
        "import seggpt_core.prompt_tuning, seggpt_core.build, worker.model_jobs, worker.runtime\n"
        "from seggpt_core import SegGptPredictor, load_model\n"
        "load_model('tiny-appearance', device='cpu')\n"
        "print(sorted(m for m in sys.modules if m.startswith('seggpt_core.research')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_loss_lives_in_its_own_module_shared_by_training_and_tuning():
    from seggpt_core import loss, prompt_tuning
    from seggpt_core.research import training

    assert prompt_tuning.balanced_loss is loss.balanced_loss and training.balanced_loss is loss.balanced_loss


WEB_PROCESS = """
import json, sys
from pathlib import Path

from fastapi.testclient import TestClient

import backend.cli  # serve runs from it: every command's module is imported to build the parser
from backend.app import create_app
from backend.settings import Settings
from worker import EmbeddedRedis

recorded = lambda name: json.loads((Path("tests/recorded") / name).read_text())["body"]
context = recorded("predict_context_keypoint.json")
server = EmbeddedRedis(Path(sys.argv[1]))
server.connect()  # starts it
try:
    backend.cli.build_parser()
    settings = Settings(weights="random:tiny", redis_url=server.url, predict_budget=0.3)
    with TestClient(create_app(settings)) as client:
        answers = [
            client.get("/health"),
            client.post("/setup", json=recorded("setup.json")),
            client.post("/predict", json=recorded("predict.json")),  # queued; no worker: answered empty at the budget
            client.post("/setup", json={**recorded("setup.json"), "schema": context["label_config"]}),  # its controls
            client.post("/predict", json=context),  # interactive
            client.post("/webhook", json=recorded("webhook_ANNOTATION_CREATED.json")),
            client.post("/webhook", json=recorded("webhook_TASKS_CREATED.json")),
        ]
finally:
    server.stop()
print(json.dumps({"statuses": [a.status_code for a in answers], "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))[:5]}))
"""


def test_the_web_process_never_imports_torch(tmp_path):
    """The torch-free boundary (see `backend/__init__.py`): serve, a /predict (batch and interactive) and webhooks
    run without importing torch; only the workers load it."""
    env = {**os.environ, "MODEL_DIR": str(tmp_path)}
    env.pop("REDIS_URL", None)
    result = subprocess.run([sys.executable, "-c", WEB_PROCESS, str(tmp_path / "redis")], capture_output=True, text=True,
                            timeout=120, env=env, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["statuses"] == [200] * 7, outcome
    assert outcome["torch"] == [], outcome
