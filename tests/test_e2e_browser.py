"""The whole path through real processes, ending in a real browser: Label Studio 1.23.2, `seggpt-ls serve` with a
separate `seggpt-ls worker`, predictions by "retrieve predictions" and by opening a task, the labeling page drawing
the predicted mask; and the folder mode's Label Studio JSON imported into the real server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seggpt_core.research.shapes import make_scene

from .ls_harness import PASSWORD, USER, brush_result, start_backend
from .media_server import MediaServer
from .queue_helpers import png_bytes as _png
from .queue_helpers import wait_for
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CONFIG = ('<View><Image name="picture" value="$image"/><BrushLabels name="brush" toName="picture">'
          '<Label value="Disc"/><Label value="Star shape ñ"/></BrushLabels></View>')
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _region(mask: np.ndarray, label: str, rid: str) -> dict:
    return brush_result(mask, label, rid, "brush", "picture")


def _wait(predicate, timeout: float, what: str):
    return wait_for(predicate, timeout, interval=0.5, what=what)


@pytest.fixture
def stack(label_studio, tmp_path):
    """serve (no local workers) + one separate worker process, on the backend's embedded Redis."""
    backend = start_backend(tmp_path / "backend", label_studio, workers=0)
    env = {**os.environ, **backend.env, "MODEL_DIR": str(backend.model_dir)}
    env.pop("REDIS_URL", None)
    worker = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker"], env=env,
                              stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec())
    yield backend
    worker.terminate()
    worker.wait(60)
    backend.stop()


def test_predictions_reach_the_labeling_page(label_studio, stack):
    from label_studio_sdk.converter.brush import decode_rle

    from backend.prompt_pool import PromptPool

    project = label_studio.create_project("browser check", CONFIG)
    scenes = [make_scene(820 + i, size=(240, 320), must_include=("disc", "star")) for i in range(4)]
    label_studio.upload(project, {f"u{i}.png": _png(s.image) for i, s in enumerate(scenes)})
    tasks = label_studio.tasks(project)
    by_name = {t["data"]["image"].rsplit("-", 1)[-1]: t for t in tasks}
    for index in (0, 1):
        label_studio.annotate(by_name[f"u{index}.png"]["id"], [
            _region(scenes[index].masks["disc"], "Disc", f"d{index}"), _region(scenes[index].masks["star"], "Star shape ñ", f"s{index}")])
    label_studio.connect_backend(project, stack.url, stack.user, stack.password)
    _wait(lambda: PromptPool(stack.redis(), project).size() == 2, 120, "the prompt pool")

    # "retrieve predictions" for one task, then merely opening the other makes Label Studio ask the backend
    retrieved, opened = by_name["u2.png"], by_name["u3.png"]
    label_studio.retrieve_predictions(project, [retrieved["id"]])
    _wait(lambda: label_studio.predictions(retrieved["id"]), 60, "the retrieved prediction")
    assert label_studio.predictions(opened["id"]) == []
    label_studio.api("GET", f"/api/tasks/{opened['id']}")
    _wait(lambda: label_studio.predictions(opened["id"]), 60, "the prediction made on opening the task")

    prediction = label_studio.predictions(retrieved["id"])[0]
    region = max(prediction["result"], key=lambda r: len(r["value"]["rle"]))
    label = region["value"]["brushlabels"][0]
    mask = decode_rle(region["value"]["rle"]).reshape(240, 320, 4)[..., 3] > 0
    assert 0.02 < mask.mean() < 0.98, "the predicted mask must leave pixels on both sides"

    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{label_studio.url}/user/login/")
            page.fill('input[name="email"]', USER)
            page.fill('input[name="password"]', PASSWORD)
            page.click('button[type="submit"], input[type="submit"]')
            page.wait_for_load_state("networkidle")
            page.goto(f"{label_studio.url}/projects/{project}/data?task={retrieved['id']}")
            page.get_by_text(label, exact=True).first.wait_for(timeout=60000)
            time.sleep(2)  # let the brush layer paint
            shot = ARTIFACTS / "labeling-page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10000
            # the region list names the predicted label
            assert page.locator(".lsf-region-item, [class*='region']").filter(has_text=label).count() >= 1
            # the canvas: pixels under the mask are tinted, the others show the image as it is
            # the image and its regions are drawn on the labeling canvas (the largest one), fitted to its width
            canvases = page.locator("canvas")
            box = max((canvases.nth(i).bounding_box() for i in range(canvases.count())), key=lambda b: b["width"] * b["height"])
            box = {**box, "height": min(box["height"], box["width"] * 240 / 320)}
            rendered = Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")
        finally:
            browser.close()
    width, height = rendered.size
    original = np.asarray(scenes[2].image.resize((width, height), Image.BILINEAR), dtype=np.float32)
    on_screen = np.asarray(rendered, dtype=np.float32)
    inside = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    change = np.abs(on_screen - original).mean(axis=2)
    assert change[inside].mean() > change[~inside].mean() + 10, (change[inside].mean(), change[~inside].mean())


def test_folder_mode_json_imports_into_label_studio(label_studio, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        (images / f"img{index}.png").write_bytes(_png(make_scene(840 + index, size=(90, 120)).image))
    prompt = make_scene(850, size=(90, 120), must_include=("disc",))
    (tmp_path / "prompt.png").write_bytes(_png(prompt.image))
    Image.fromarray(prompt.masks["disc"].astype(np.uint8) * 255).save(tmp_path / "disc.png")
    media = MediaServer(images)
    try:
        out = tmp_path / "out"
        result = subprocess.run([sys.executable, "-m", "backend.cli", "segment", "--no-queue", "--weights", "random:tiny", "--device", "cpu",
                                 "--prompt", f"{tmp_path / 'prompt.png'}:{tmp_path / 'disc.png'}:Disc", "--images", str(images),
                                 "--out", str(out), "--format", "ls-json", "--image-prefix", f"{media.url}/"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        project = label_studio.create_project("folder import", (out / "label-config.xml").read_text())
        label_studio.import_tasks(project, json.loads((out / "label-studio.json").read_text()))
        tasks = label_studio.tasks(project)
        assert len(tasks) == 3
        for task in tasks:
            predictions = label_studio.predictions(task["id"])
            assert len(predictions) == 1 and predictions[0]["model_version"] == "seggpt-folder"
            for region in predictions[0]["result"]:
                assert region["from_name"] == "label" and region["value"]["brushlabels"] == ["Disc"]
    finally:
        media.stop()


def _login(page, label_studio) -> None:
    page.goto(f"{label_studio.url}/user/login/")
    page.fill('input[name="email"]', USER)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"], input[type="submit"]')
    page.wait_for_load_state("networkidle")


def test_a_smart_key_point_in_the_real_frontend_brings_back_the_other_instances(label_studio, tmp_path):
    """The annotator turns Auto-Annotation on, clicks one instance with the smart key point, accepts what comes
    back and submits: the stored annotation holds the other instances of that class, and not the other class."""
    import cv2
    from label_studio_sdk.converter.brush import decode_rle
    from playwright.sync_api import sync_playwright

    from seggpt_core.research.appearance import make_appearance_episode

    episode = make_appearance_episode(10009018, shots=1, size=(120, 160), family="heldout")  # as tests/test_marks.py
    label, target = episode.categories[0], episode.targets[0]
    truth = target.masks[label]
    count, components = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    marked = components == int(sizes.argmax())
    inner = cv2.distanceTransform(marked.astype(np.uint8), cv2.DIST_L2, 3)
    py, px = np.unravel_index(int(inner.argmax()), inner.shape)
    config = ('<View><Image name="picture" value="$image"/>'
              f'<BrushLabels name="brush" toName="picture"><Label value="{label}"/><Label value="Other"/></BrushLabels>'
              f'<KeyPointLabels name="mark" toName="picture" smart="true"><Label value="{label}"/></KeyPointLabels></View>')
    project = label_studio.create_project("marked instance in the open image", config)
    label_studio.upload(project, {"target.png": _png(target.image)})
    [task] = label_studio.tasks(project)
    backend = start_backend(tmp_path / "backend", label_studio, workers=1, extra_env={"SEGGPT_WEIGHTS": "tiny-appearance"})
    try:
        label_studio.connect_backend(project, backend.url, backend.user, backend.password, interactive=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                _login(page, label_studio)
                page.goto(f"{label_studio.url}/projects/{project}/data?task={task['id']}")
                page.get_by_text("Auto-Annotation").wait_for(timeout=60000)
                page.get_by_text("Auto-Annotation").click()
                page.get_by_text("Auto-Accept Suggestions").click()
                page.locator(".lsf-tool_smart").first.hover()
                page.locator(".lsf-tool_smart[aria-label=key-point-tool]").first.click()
                page.mouse.move(5, 5)
                page.locator(".lsf-label").filter(has_text=label).last.click()
                named = page.get_by_text(label, exact=True)
                before = named.count()  # the label buttons
                canvases = page.locator("canvas")
                box = max((canvases.nth(i).bounding_box() for i in range(canvases.count())), key=lambda b: b["width"] * b["height"])
                scale = box["width"] / 160
                page.mouse.click(box["x"] + (px + 0.5) * scale, box["y"] + (py + 0.5) * scale)
                # the suggestion is accepted into the annotation as brush regions
                ARTIFACTS.mkdir(exist_ok=True)
                try:
                    # each accepted instance is listed in the regions panel under its label
                    _wait(lambda: named.count() >= before + 2, 60, "the suggested regions")
                    time.sleep(1)
                finally:
                    page.screenshot(path=str(ARTIFACTS / "marked instance-suggestion.png"))
                page.get_by_role("button", name="Submit").click()
                _wait(lambda: label_studio.api("GET", f"/api/tasks/{task['id']}/annotations/").json(), 60, "the submitted annotation")
            finally:
                browser.close()
    finally:
        backend.stop()
    [annotation] = label_studio.api("GET", f"/api/tasks/{task['id']}/annotations/").json()
    found = np.zeros(truth.shape, dtype=bool)
    brush = [r for r in annotation["result"] if r["type"] == "brushlabels"]
    assert len(brush) >= 2, [r["type"] for r in annotation["result"]]  # one region per instance
    for region in brush:
        assert region["value"]["brushlabels"] == [label]
        found |= decode_rle(region["value"]["rle"]).reshape(120, 160, 4)[..., 3] > 0
    others = truth & ~marked
    assert (found & others).sum() / others.sum() > 0.8, "the instances that were not clicked"
    assert (found & truth).sum() / (found | truth).sum() > 0.65
