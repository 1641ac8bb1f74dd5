"""Inference never imports research code (synthetic episodes, training, evaluation)."""

from __future__ import annotations

import subprocess
import sys


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
