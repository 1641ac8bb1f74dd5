"""`seggpt-ls tryout` as a newcomer runs it: against the harness's cached Label Studio venv, until its `ready:` line;
then, through Label Studio's API and in a real browser, the pre-labels it promises; SIGINT ends everything it
started; the next run reuses the project, and SIGKILL of the tryout ends everything too."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.local_label_studio import LabelStudioApi
from backend.sample_scenes import LABELS, draw_scene
from backend.tryout_project import ANNOTATED, KNOWN_MIOU, SAMPLE_SIZE, SEED, task_sample_index
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

from .process_check import alive, live_descendants

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


class Tryout:
    """A running `seggpt-ls tryout`, its output collected line by line."""

    def __init__(self, directory: Path) -> None:
        env = {**os.environ}
        env.pop("REDIS_URL", None)
        self.process = subprocess.Popen([sys.executable, "-m", "backend.cli", "tryout", "--dir", str(directory)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                        preexec_fn=exec_child_preexec())
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = [line for line in self.lines if line.startswith("ready: ")]
            if ready:
                return dict(part.split("=", 1) for part in ready[0][len("ready: "):].split())
            assert self.process.poll() is None, "tryout ended before ready:\n" + "\n".join(self.lines[-40:])
            time.sleep(0.5)
        raise AssertionError("no ready: line within the deadline:\n" + "\n".join(self.lines[-40:]))

    def line(self, prefix: str) -> str:
        return next(line for line in self.lines if line.startswith(prefix))

    def end(self, number: int = signal.SIGINT) -> None:
        if self.process.poll() is None:
            self.process.send_signal(number)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def tryout(tmp_path_factory):
    run = Tryout(tmp_path_factory.mktemp("tryout"))
    try:
        run.ready = run.wait_ready()
        yield run
    finally:
        run.end()


def _union(prediction: dict, label: str) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    mask = np.zeros(SAMPLE_SIZE, dtype=bool)
    for region in prediction["result"]:
        if label in region["value"].get("brushlabels", []):
            mask |= decode_rle(region["value"]["rle"]).reshape(*SAMPLE_SIZE, 4)[..., 3] > 0
    return mask


def test_every_unannotated_task_holds_one_prediction_at_the_known_miou(tryout):
    api = LabelStudioApi(tryout.ready["url"], tryout.ready["token"])
    project = int(tryout.ready["project"])
    version = api.project(project)["model_version"]
    assert version.startswith("seggpt-")
    tasks = api.tasks(project)
    assert len(tasks) == 40
    unannotated = [t for t in tasks if not t["annotations"]]
    assert sorted(task_sample_index(t) for t in tasks if t["annotations"]) == list(ANNOTATED)
    ious = {label: [] for label in LABELS}
    for task in unannotated:
        predictions = api.predictions(task["id"])
        assert [p["model_version"] for p in predictions] == [version], task["id"]
        truth = draw_scene(SEED + task_sample_index(task), SAMPLE_SIZE).masks
        for label in LABELS:
            mask = _union(predictions[0], label)
            union = (mask | truth[label]).sum()
            ious[label].append((mask & truth[label]).sum() / union if union else 1.0)
    miou = float(np.mean([np.mean(values) for values in ious.values()]))
    assert abs(miou - KNOWN_MIOU) <= 0.05, miou
    printed = float(tryout.line("pre-labels of 38 tasks").rsplit("mIoU ", 1)[1])
    assert abs(printed - miou) < 0.002, (printed, miou)
    assert "38 tasks hold pre-labels" in "\n".join(tryout.lines)
    assert float(tryout.line("ready in ").split()[2]) > 0


def test_the_labeling_page_draws_the_predicted_regions(tryout):
    from playwright.sync_api import sync_playwright

    api = LabelStudioApi(tryout.ready["url"], tryout.ready["token"])
    project = int(tryout.ready["project"])
    task = next(t for t in api.tasks(project) if not t["annotations"])
    prediction = api.predictions(task["id"])[0]
    label = max(LABELS, key=lambda name: _union(prediction, name).sum())
    mask = _union(prediction, label)
    assert 0.02 < mask.mean() < 0.98
    scene = draw_scene(SEED + task_sample_index(task), SAMPLE_SIZE)
    url = tryout.ready["url"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/user/login/")
            page.fill('input[name="email"]', tryout.ready["user"])
            page.fill('input[name="password"]', tryout.ready["password"])
            page.click('button[type="submit"], input[type="submit"]')
            page.wait_for_load_state("networkidle")
            page.goto(f"{url}/projects/{project}/data?task={task['id']}")
            page.get_by_text(label, exact=True).first.wait_for(timeout=60000)
            time.sleep(2)  # let the brush layer paint
            page.screenshot(path=str(ARTIFACTS / "tryout-labeling-page.png"))
            assert page.locator(".lsf-region-item, [class*='region']").filter(has_text=label).count() >= 1
            # the image and its regions are drawn on the largest canvas, fitted to its width
            canvases = page.locator("canvas")
            box = max((canvases.nth(i).bounding_box() for i in range(canvases.count())), key=lambda b: b["width"] * b["height"])
            box = {**box, "height": min(box["height"], box["width"] * SAMPLE_SIZE[0] / SAMPLE_SIZE[1])}
            rendered = Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")
        finally:
            browser.close()
    width, height = rendered.size
    original = np.asarray(scene.image.resize((width, height), Image.BILINEAR), dtype=np.float32)
    change = np.abs(np.asarray(rendered, dtype=np.float32) - original).mean(axis=2)
    inside = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    assert change[inside].mean() > change[~inside].mean() + 10, (change[inside].mean(), change[~inside].mean())


def test_bootstrap_with_weights_no_one_can_load_says_so_in_one_line(tryout, tmp_path):
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "model"), "SEGGPT_WEIGHTS": "BAAI/seggpt-vit-large", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "LABEL_STUDIO_URL": tryout.ready["url"], "LABEL_STUDIO_API_KEY": tryout.ready["token"]}
    env.pop("REDIS_URL", None)
    result = subprocess.run([sys.executable, "-m", "backend.cli", "bootstrap", "--project", tryout.ready["project"]],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "SEGGPT_WEIGHTS=BAAI/seggpt-vit-large" in error[0], result.stderr[-3000:]
    assert "local directory" in error[0] and "tiny-appearance" in error[0]


def test_sigint_ends_everything_and_the_next_run_reuses_the_project(tryout, tmp_path_factory):
    started = live_descendants(tryout.process.pid)
    assert len(started) >= 4, started  # Label Studio, serve, its worker, its Redis
    tryout.end(signal.SIGINT)
    assert tryout.process.returncode == 0, "\n".join(tryout.lines[-20:])
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not [pid for pid in started if alive(pid)]

    directory = Path(tryout.process.args[tryout.process.args.index("--dir") + 1])
    again = Tryout(directory)
    try:
        ready = again.wait_ready()
        assert ready["project"] == tryout.ready["project"] and ready["password"] == tryout.ready["password"]
        assert again.line("reusing project ")
        assert "queued 0 task(s)" in "\n".join(again.lines)
        # SIGKILL leaves the tryout no say: the kernel ends what it started
        started = live_descendants(again.process.pid)
        again.process.kill()
        again.process.wait()
        deadline = time.monotonic() + 40
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not [pid for pid in started if alive(pid)]
    finally:
        again.end()
