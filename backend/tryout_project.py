"""The tryout's sample project: its label config, sample images with the generator's ground truth, two tasks
annotated as a person would, and how close the pre-labels come to the truth."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .folder_mode import IMAGE_SUFFIXES
from .local_label_studio import LabelStudioApi, brush_result
from .sample_scenes import LABELS, draw_scene
from .ls_rle import rle_to_flat

__all__ = ["TITLE", "SEED", "SAMPLE_SIZE", "KNOWN_MIOU", "ANNOTATED", "label_config", "sample_name", "create_sample_project", "find_project",
           "create_folder_project", "task_sample_index", "prelabel_miou"]

TITLE = "seggpt-ls tryout"
SEED = 20261300
SAMPLE_SIZE = (120, 160)  # the demo's size: what tiny-appearance was trained near
ANNOTATED = (0, 1)  # sample indexes annotated through the API: the prompts
# the label colors follow the classes' own colors, so a mask reads at a glance
COLORS = {"dotted": "#1e78a0", "striped": "#eb9628"}
# regions scoring below this are left out of pre-labels (Label Studio's own attribute on the control)
SCORE_THRESHOLD = 0.05
# what tiny-appearance's pre-labels of the 38 unannotated samples score against the generator's truth (measured:
# dotted 0.611, striped 0.658); the tryout prints its own figure, the tests hold it to this one
KNOWN_MIOU = 0.635


def label_config(labels: tuple[str, ...] = LABELS) -> str:
    """BrushLabels for the masks and a smart KeyPointLabels with the same labels: click one instance to get the others."""
    brush = "".join(f'<Label value="{label}" background="{COLORS.get(label, "#d03030")}"/>' for label in labels)
    marks = "".join(f'<Label value="{label}" background="{COLORS.get(label, "#d03030")}"/>' for label in labels)
    return ('<View><Image name="image" value="$image" zoom="true"/>'
            f'<BrushLabels name="brush" toName="image" model_score_threshold="{SCORE_THRESHOLD}">{brush}</BrushLabels>'
            f'<KeyPointLabels name="mark" toName="image" smart="true">{marks}</KeyPointLabels></View>')


def sample_name(index: int) -> str:
    return f"tryout_{index:02d}.png"


def task_sample_index(task: dict) -> int | None:
    """Which sample a task shows, from its uploaded file name (Label Studio prefixes a hash: `ab12cd-tryout_07.png`)."""
    name = str(task.get("data", {}).get("image", "")).rsplit("/", 1)[-1].rsplit("-", 1)[-1]
    if name.startswith("tryout_") and name.endswith(".png"):
        return int(name[len("tryout_"):-len(".png")])
    return None


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def find_project(api: LabelStudioApi, title: str = TITLE) -> int | None:
    """The newest project of that title, if any."""
    body = api.api("GET", "/api/projects", params={"title": title, "page_size": 100}).json()
    projects = [p for p in (body.get("results", []) if isinstance(body, dict) else body) if p.get("title") == title]
    return max((p["id"] for p in projects), default=None)


def create_sample_project(api: LabelStudioApi, count: int, say=print) -> int:
    """A project with `count` generated images; the first two annotated with the generator's masks."""
    project = api.create_project(TITLE, label_config())
    scenes = {sample_name(i): draw_scene(SEED + i, SAMPLE_SIZE) for i in range(count)}
    api.upload(project, {name: _png(scene.image) for name, scene in scenes.items()})
    tasks = api.tasks(project)
    for task in tasks:
        index = task_sample_index(task)
        if index in ANNOTATED:
            masks = draw_scene(SEED + index, SAMPLE_SIZE).masks
            api.annotate(task["id"], [brush_result(masks[label], label, f"{label[:3]}{index}", "brush", "image") for label in LABELS])
    say(f"created project {project} \"{TITLE}\": {len(tasks)} sample images, {len(ANNOTATED)} annotated through the API")
    return project


def create_folder_project(api: LabelStudioApi, images: Path, labels: tuple[str, ...], say=print) -> int:
    """A project with the user's own images (for the real weights): nothing is annotated yet."""
    files = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"--images {images}: no images found")
    project = api.create_project(TITLE, label_config(labels))
    for start in range(0, len(files), 50):
        api.upload(project, {p.name: p.read_bytes() for p in files[start:start + 50]})
    say(f"created project {project} \"{TITLE}\": {len(files)} images from {images}")
    return project


def _union(prediction: dict, label: str, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for region in prediction.get("result", []):
        value = region.get("value", {})
        if region.get("type") == "brushlabels" and label in value.get("brushlabels", []):
            mask |= rle_to_flat(value["rle"]).reshape(*shape, 4)[..., 3] > 0
    return mask


def prelabel_miou(api: LabelStudioApi, project: int, model_version: str | None = None) -> tuple[float, dict[str, float], int]:
    """Mean IoU of the pre-labels (the prediction of `model_version`, else the newest) against the generator's
    truth over the unannotated sample tasks: (mIoU, per label, tasks counted)."""
    from seggpt_core.research.evaluation import EvalReport, iou  # torch: not at the top (see backend/__init__.py)

    scores = EvalReport()
    counted = 0
    for task in api.tasks(project):
        index = task_sample_index(task)
        if index is None or index in ANNOTATED:
            continue
        predictions = [p for p in api.predictions(task["id"]) if model_version is None or p.get("model_version") == model_version]
        if not predictions:
            continue
        prediction = max(predictions, key=lambda p: p["id"])
        truth = draw_scene(SEED + index, SAMPLE_SIZE).masks
        counted += 1
        for label in LABELS:
            scores.add(label, iou(_union(prediction, label, SAMPLE_SIZE), truth[label]))
    return (scores.miou if counted else 0.0), dict(scores.class_means), counted
