"""Review records against a real Label Studio 1.23.2: a project of held-out episodes gets its prompts and a
bootstrap, simulated annotators submit the ground truth (or the prediction unchanged) with `parent_prediction`
set as the labeling page sets it, and `seggpt-ls report --json` agrees with an independent computation from the
same masks; the report's HTML renders its charts in chromium and shows the JSON's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from seggpt_core.research.appearance import make_appearance_episode
from seggpt_core.research.evaluation import HELD_OUT_SEED

from .ls_harness import start_backend
from .queue_helpers import png_bytes, wait_for
from .test_e2e_browser import CHROMIUM, CHROMIUM_ARGS
from worker.lifecycle import exec_child_preexec  # the kernel ends it if pytest dies

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LABELS = ("Alpha", "Beta")
CONFIG = ('<View><Image name="image" value="$image"/><PolygonLabels name="tag" toName="image">'
          + "".join(f'<Label value="{label}"/>' for label in LABELS) + "</PolygonLabels></View>")
SHOTS, TARGETS = 2, 16
SEED = HELD_OUT_SEED + 950_000  # apart from training, checkpoint selection and `seggpt-ls eval`


def _polygons(mask: np.ndarray, label: str, rid: str) -> list[dict]:
    """Ground truth as an annotator draws it: one polygon per instance."""
    from backend.label_config import parse_label_config
    from backend.ls_format import polygon_regions

    regions = polygon_regions(mask, parse_label_config(CONFIG)[0], label, 1.0, rid)
    return [{k: v for k, v in r.items() if k not in ("score", "readonly")} for r in regions]


def _raster(region: dict) -> np.ndarray:
    """Independent of the backend's decoding: the polygon drawn with Pillow at the region's own size."""
    width, height = region["original_width"], region["original_height"]
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(x * width / 100, y * height / 100) for x, y in region["value"]["points"]], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _expected(prediction: list[dict], annotation: list[dict]) -> dict[str, tuple[float, int, int]]:
    """label -> (IoU of the unions, deleted, added), matching regions one to one at IoU >= 0.5, best pairs first."""
    out = {}
    for label in LABELS:
        ours = [_raster(r) for r in prediction if r["value"]["polygonlabels"] == [label]]
        truth = [_raster(r) for r in annotation if r["value"]["polygonlabels"] == [label]]
        if not ours and not truth:
            continue
        shape = (ours or truth)[0].shape
        a = np.any(ours, axis=0) if ours else np.zeros(shape, bool)
        b = np.any(truth, axis=0) if truth else np.zeros(shape, bool)
        iou = (a & b).sum() / (a | b).sum() if (a | b).any() else 1.0
        pairs = sorted((((p & t).sum() / (p | t).sum(), i, j) for i, p in enumerate(ours) for j, t in enumerate(truth)), reverse=True)
        matched_p, matched_t = set(), set()
        for value, i, j in pairs:
            if value >= 0.5 and i not in matched_p and j not in matched_t:
                matched_p.add(i)
                matched_t.add(j)
        out[label] = (float(iou), len(ours) - len(matched_p), len(truth) - len(matched_t))
    return out


def _cli(backend, label_studio, *args: str) -> str:
    env = {**os.environ, **backend.env, "MODEL_DIR": str(backend.model_dir)}
    env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "backend.cli", "--log-level", "WARNING", *args], env=env, capture_output=True, text=True,
                          timeout=600, preexec_fn=exec_child_preexec())
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def reviewed(label_studio, tmp_path_factory):
    """(backend, project, the report as JSON, the independent numbers, tasks annotated from scratch)."""
    episode = make_appearance_episode(SEED, shots=SHOTS, targets=TARGETS, labels=2)
    names = dict(zip(episode.categories, LABELS))
    backend = start_backend(tmp_path_factory.mktemp("review") / "backend", label_studio, extra_env={
        "SEGGPT_WEIGHTS": "tiny-appearance", "SEGGPT_NUM_PROMPTS": "2", "SEGGPT_CALIBRATION_MIN_REGIONS": "4"})
    try:
        project = label_studio.create_project("review records", CONFIG)
        files = {f"prompt{i}.png": png_bytes(p.image) for i, p in enumerate(episode.prompts)}
        files.update({f"target{j}.png": png_bytes(t.image) for j, t in enumerate(episode.targets)})
        label_studio.upload(project, files)
        by_name = {t["data"]["image"].rsplit("-", 1)[-1]: t for t in label_studio.tasks(project)}
        for i, prompt in enumerate(episode.prompts):  # from scratch, before any prediction: the lead-time baseline
            result = [r for c in episode.categories for r in _polygons(prompt.masks[c], names[c], f"p{i}{names[c]}")]
            label_studio.api("POST", f"/api/tasks/{by_name[f'prompt{i}.png']['id']}/annotations/", json={"result": result, "lead_time": 40.0 + i})
        label_studio.connect_backend(project, backend.url, backend.user, backend.password)
        _cli(backend, label_studio, "bootstrap", "--project", str(project))

        expected, scratch = {}, []
        for j, target in enumerate(episode.targets[: TARGETS // 2]):
            task = by_name[f"target{j}.png"]["id"]
            prediction = label_studio.predictions(task)[0]
            if j % 4 == 3:  # accepted as it came
                result = prediction["result"]
            else:
                result = [r for c in episode.categories for r in _polygons(target.masks[c], names[c], f"t{j}{names[c]}")]
            label_studio.api("POST", f"/api/tasks/{task}/annotations/",
                             json={"result": result, "parent_prediction": prediction["id"], "lead_time": 10.0 + j})
            expected[task] = _expected(prediction["result"], result)
        connection = backend.redis()
        from backend.review_store import load_records

        # the webhooks' jobs re-read each annotation from Label Studio
        wait_for(lambda: len(load_records(connection, project)) == len(expected), 240, 0.5, "a review record per annotated task")
        report = json.loads(_cli(backend, label_studio, "report", "--project", str(project), "--json"))
        yield backend, project, report, expected, connection
    finally:
        backend.stop()


def test_report_agrees_with_an_independent_computation(reviewed):
    backend, project, report, expected, connection = reviewed
    from backend.review_store import load_records

    records = {r["task"]: r for r in load_records(connection, project)}
    assert all(r["from_prediction"] and r["parent"] for r in records.values())
    assert sum(r["accepted"] for r in records.values()) == 2  # the two submitted unchanged, and no other
    assert all(records[task]["prompts"] for task in expected), "every record names the prompts that took part"
    assert report["project"] == project and report["tasks_reviewed"] == len(expected)
    for label in LABELS:
        mine = [numbers[label] for numbers in expected.values() if label in numbers]
        numbers = report["labels"][label]
        assert numbers["reviewed"] == len(mine)
        assert numbers["mean_iou"] == pytest.approx(np.mean([m[0] for m in mine]), abs=0.005)
        assert numbers["regions_deleted"] == sum(m[1] for m in mine)
        assert numbers["regions_added"] == sum(m[2] for m in mine)
        assert set(numbers) >= {"reviewed", "mean_iou", "regions_deleted", "regions_added", "threshold"}
    assert 0.3 < np.mean([report["labels"][label]["mean_iou"] for label in LABELS]) < 1.0  # a real model, really edited
    assert report["accepted_share"] == pytest.approx(2 / len(expected))


def test_a_rebuild_from_label_studio_gives_the_same_records_and_the_lead_time_comparison(reviewed, label_studio):
    backend, project, report, expected, connection = reviewed
    rebuilt = json.loads(_cli(backend, label_studio, "report", "--project", str(project), "--json", "--rebuild"))
    assert rebuilt["labels"] == report["labels"] and rebuilt["versions"] == report["versions"] and rebuilt["prompts"] == report["prompts"]
    assert rebuilt["tasks_from_scratch"] == SHOTS  # the prompts were annotated before any prediction
    assert rebuilt["lead_time"]["from_scratch"] == pytest.approx(40.5)
    assert rebuilt["lead_time"]["from_prediction"] == pytest.approx(np.mean([10.0 + j for j in range(TARGETS // 2)]))
    # /metrics: the live numbers, labelled by the project's labels
    import httpx

    text = httpx.get(f"{backend.url}/metrics", auth=(backend.user, backend.password), timeout=30).text
    for label in LABELS:
        line = next(l for l in text.splitlines() if l.startswith(f'seggpt_review_iou{{label="{label}",project="{project}"}}'))
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(report["labels"][label]["mean_iou"], abs=1e-6)


def test_the_html_report_renders_its_charts_and_shows_the_json_numbers(reviewed, label_studio, tmp_path):
    from playwright.sync_api import sync_playwright

    backend, project, report, expected, connection = reviewed
    output = _cli(backend, label_studio, "report", "--project", str(project), "--out", str(tmp_path), "--json")
    numbers = json.loads(output)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto((tmp_path / "report.html").as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(ARTIFACTS / "review-report.png"), full_page=True)
            charts = page.eval_on_selector_all("img.chart", "images => images.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            thumbs = page.eval_on_selector_all("img.thumb", "images => images.map(i => i.naturalWidth)")
            cells = page.eval_on_selector_all("td[data-label]", "cells => cells.map(c => [c.dataset.label, c.dataset.key, c.textContent])")
            versions = page.eval_on_selector_all("td[data-version]", "cells => cells.map(c => [c.dataset.version, c.dataset.key, c.textContent])")
        finally:
            browser.close()
    assert len(charts) == 3 and all(done and width > 200 and height > 100 for done, width, height in charts), charts
    assert thumbs and all(width > 50 for width in thumbs), "best and worst prompts as thumbnails"
    assert {(label, key) for label, key, _ in cells} >= {(label, "mean_iou") for label in LABELS}
    for label, key, text in cells:
        value = numbers["labels"][label][key]
        assert text == "n/a" if value is None else float(text) == pytest.approx(value, abs=5e-5), (label, key, text, value)
    for version, key, text in versions:
        assert float(text) == pytest.approx(numbers["versions"][version][key], abs=5e-5)


def test_prompt_usefulness_is_listed_and_a_harmful_prompt_is_left_out_without_deleting_it(reviewed, label_studio):
    from backend.label_config import parse_label_config
    from backend.prompt_pool import PromptPool

    backend, project, report, expected, connection = reviewed
    listing = _cli(backend, label_studio, "prompts", "--project", str(project))
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert set(rows) == set(report["prompts"])
    for annotation_id, numbers in report["prompts"].items():
        assert int(rows[annotation_id][2]) == numbers["predictions"] and float(rows[annotation_id][3]) == pytest.approx(numbers["mean_iou"], abs=5e-4)
    worst = list(report["prompts"])[-1]
    pool = PromptPool(connection, project)
    before = pool.version()
    assert int(worst) in pool.prompt_set_with_sources("image", parse_label_config(CONFIG), 16)[1]
    assert f"left out of the prompts: [{worst}]" in _cli(backend, label_studio, "prompts", "--project", str(project), "--exclude", worst)
    assert pool.version() != before and int(worst) not in pool.prompt_set_with_sources("image", parse_label_config(CONFIG), 16)[1]
    assert any(a["id"] == int(worst) for t in label_studio.tasks(project) for a in t["annotations"])  # the human's work stays
    _cli(backend, label_studio, "prompts", "--project", str(project), "--include", worst)
    assert pool.version() == before


def test_a_deleted_annotation_takes_its_record_with_it(reviewed, label_studio):
    from backend.review_store import load_records

    backend, project, report, expected, connection = reviewed
    task = sorted(expected)[0]
    annotation = label_studio.api("GET", f"/api/tasks/{task}/annotations/").json()[0]
    label_studio.api("DELETE", f"/api/annotations/{annotation['id']}/")
    # the ANNOTATIONS_DELETED webhook names only the annotation: the job finds its task and re-reads it
    wait_for(lambda: task not in {r["task"] for r in load_records(connection, project)}, 120, 0.5, "the record to go")
    assert len(load_records(connection, project)) == len(expected) + SHOTS - 1  # the rebuild added the two from scratch
