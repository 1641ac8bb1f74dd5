"""End to end against a real Label Studio 1.23.2: projects, uploads, annotations, the backend over Basic auth,
"retrieve predictions", and what Label Studio stores."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from seggpt_core.research.shapes import make_scene

from .ls_harness import brush_result, start_backend
from .media_server import MediaServer
from .queue_helpers import png_bytes as _png
from .queue_helpers import wait_for

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="picture" value="$image"/>
  <BrushLabels name="brush" toName="picture">
    <Label value="Disc"/>
    <Label value="Star shape ñ"/>
  </BrushLabels>
  <PolygonLabels name="outline" toName="picture">
    <Label value="Square"/>
  </PolygonLabels>
</View>"""


def _rotated_jpeg(image: Image.Image) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6: displayed as `image`."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.transpose(Image.ROTATE_90).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def _brush(mask: np.ndarray, label: str, rid: str) -> dict:
    return brush_result(mask, label, rid, "brush", "picture")


def _polygon(mask: np.ndarray, label: str, rid: str) -> dict:
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    points = [[100 * x / width, 100 * y / height] for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    return {"id": rid, "from_name": "outline", "to_name": "picture", "type": "polygonlabels", "original_width": width,
            "original_height": height, "image_rotation": 0, "value": {"points": points, "polygonlabels": [label], "closed": True}}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    directory = tmp_path_factory.mktemp("media")
    for index in range(2):
        (directory / f"url{index}.png").write_bytes(_png(make_scene(900 + index, size=(100, 140)).image))
    server = MediaServer(directory)
    yield server
    server.stop()


def _wait(predicate, timeout: float, what: str):
    return wait_for(predicate, timeout, interval=0.5, what=what)


def _project_with_annotations(label_studio, media, title: str) -> tuple[int, list[dict], dict[int, tuple[int, int]]]:
    """A project with 5 uploaded images (one EXIF-rotated JPEG), 2 URL images, and 3 annotated tasks.
    Returns (project id, tasks, displayed (height, width) per task id)."""
    project = label_studio.create_project(title, CONFIG)
    scenes = [make_scene(800 + i, size=(96 + 8 * i, 128), must_include=("disc", "star", "square")) for i in range(5)]
    files = {f"upload{i}.png": _png(s.image) for i, s in enumerate(scenes[:4])}
    files["rotated.jpg"] = _rotated_jpeg(scenes[4].image)
    label_studio.upload(project, files)
    label_studio.import_tasks(project, [{"image": f"{media.url}/url{i}.png"} for i in range(2)])
    tasks = label_studio.tasks(project)
    assert len(tasks) == 7
    sizes = {}
    for task in tasks:
        name = task["data"]["image"].rsplit("/", 1)[-1]
        if name.startswith("url"):
            sizes[task["id"]] = (100, 140)
        else:
            index = 4 if name.endswith("rotated.jpg") else int(name.split("upload")[1][0])
            sizes[task["id"]] = scenes[index].image.height, scenes[index].image.width
    by_name = {t["data"]["image"].rsplit("-", 1)[-1]: t for t in tasks}
    for index in (0, 1):  # brushes on two tasks, a polygon on a third: two label groups, two kinds of region
        scene, task = scenes[index], by_name[f"upload{index}.png"]
        label_studio.annotate(task["id"], [
            _brush(scene.masks["disc"], "Disc", f"d{index}"),
            _brush(scene.masks["star"], "Star shape ñ", f"s{index}"),
        ])
    label_studio.annotate(by_name["upload2.png"]["id"], [_polygon(scenes[2].masks["square"], "Square", "p2")])
    return project, tasks, sizes


def _setup_version(backend, project: int) -> str:
    response = httpx.post(f"{backend.url}/setup", json={"project": f"{project}.1", "schema": CONFIG}, auth=(backend.user, backend.password), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def test_retrieve_predictions_end_to_end(label_studio, media, tmp_path):
    from backend.prompt_pool import PromptPool
    from label_studio_sdk.converter.brush import decode_rle

    backend = start_backend(tmp_path / "backend", label_studio, extra_env={"ALLOWED_MEDIA_HOSTS": media.host})
    try:
        project, tasks, sizes = _project_with_annotations(label_studio, media, "e2e retrieve")
        assert httpx.get(f"{backend.url}/setup").status_code in (401, 405)
        assert httpx.post(f"{backend.url}/predict", json={"tasks": []}).status_code == 401  # Basic auth is enforced
        ml = label_studio.connect_backend(project, backend.url, backend.user, backend.password)
        pool = PromptPool(backend.redis(), project)
        _wait(lambda: pool.size() == 3, 120, "the prompt pool to hold the 3 annotated tasks")
        version = _setup_version(backend, project)

        label_studio.retrieve_predictions(project)
        kinds = []
        for task in tasks:
            predictions = _wait(lambda: label_studio.predictions(task["id"]), 60, f"a prediction for task {task['id']}")
            assert len(predictions) == 1, predictions
            prediction = predictions[0]
            assert prediction["model_version"] == version
            height, width = sizes[task["id"]]
            brush = [r for r in prediction["result"] if r["type"] == "brushlabels"]
            kinds.extend(r["type"] for r in prediction["result"])
            for region in prediction["result"]:
                assert (region["original_height"], region["original_width"]) == (height, width)
                assert region["to_name"] == "picture"
            for region in brush:
                assert region["value"]["brushlabels"][0] in ("Disc", "Star shape ñ")
                decoded = decode_rle(region["value"]["rle"])
                assert decoded.size == height * width * 4  # the size the browser sees, EXIF applied
                assert set(np.unique(decoded).tolist()) <= {0, 255}

        # Random weights paint a near-constant color: brush regions appear, polygon components are too small to
        # keep. Polygon encoding is covered by tests/test_ls_format.py until a trained model paints real shapes.
        assert "brushlabels" in kinds
        for task in tasks:
            for region in label_studio.predictions(task["id"])[0]["result"]:
                if region["type"] == "polygonlabels":
                    assert len(region["value"]["points"]) >= 3 and region["value"]["polygonlabels"] == ["Square"]
        # a second retrieval stores nothing new: every task already holds the current version
        label_studio.retrieve_predictions(project)
        time.sleep(2)
        assert all(len(label_studio.predictions(t["id"])) == 1 for t in tasks)

        # GET /versions, through Label Studio's own API: a new annotation gives a new version, listed first; the
        # older one, which has predictions, can be picked in the project settings
        assert label_studio.api("GET", f"/api/ml/{ml['id']}/versions").json()["versions"][0] == version
        unlabeled = next(t for t in tasks if t["data"]["image"].endswith("url0.png"))
        label_studio.annotate(unlabeled["id"], [_brush(np.ones((100, 140), bool), "Disc", "all")])
        _wait(lambda: pool.size() == 4, 120, "the new annotation to reach the pool")
        newer = _setup_version(backend, project)
        listed = label_studio.api("GET", f"/api/ml/{ml['id']}/versions").json()["versions"]
        assert newer != version and listed[:2] == [newer, version], listed
        details = httpx.get(f"{backend.url}/versions", params={"project": project}, auth=(backend.user, backend.password)).json()["details"]
        assert [d["prompts"] for d in details[:2]] == [4, 3] and details[0]["created_at"] >= details[1]["created_at"]
        label_studio.api("PATCH", f"/api/projects/{project}", json={"model_version": version})
        assert label_studio.api("GET", f"/api/projects/{project}").json()["model_version"] == version
    finally:
        backend.stop()


def test_predictions_beyond_the_budget_are_written_by_the_workers(label_studio, media, tmp_path):
    """A budget too short to finish: /predict answers in time, the rest lands through the API, once."""
    backend = start_backend(tmp_path / "backend", label_studio, api_key=label_studio.pat,
                            extra_env={"ALLOWED_MEDIA_HOSTS": media.host, "SEGGPT_PREDICT_BUDGET": "0.2", "SEGGPT_CHUNK_SIZE": "1"})
    try:
        project, tasks, _ = _project_with_annotations(label_studio, media, "e2e budget")
        label_studio.connect_backend(project, backend.url, backend.user, backend.password)
        from backend.prompt_pool import PromptPool

        _wait(lambda: PromptPool(backend.redis(), project).size() == 3, 120, "the prompt pool (fetched with a personal access token)")
        version = _setup_version(backend, project)
        started = time.monotonic()
        label_studio.retrieve_predictions(project)
        assert time.monotonic() - started < 30
        for task in tasks:
            predictions = _wait(lambda: label_studio.predictions(task["id"]), 120, f"the worker to write task {task['id']}")
            assert [p["model_version"] for p in predictions] == [version]
        time.sleep(3)
        assert all(len(label_studio.predictions(t["id"])) == 1 for t in tasks)  # nothing written twice
    finally:
        backend.stop()
