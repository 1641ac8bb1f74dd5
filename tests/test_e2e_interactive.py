"""The marked instance click through a real Label Studio: its `/api/ml/ID/interactive-annotating` (what the labeling page
calls with Auto-Annotation on) forwards a smart key point as the `context` of `/predict`, and the backend answers
with the other instances of the clicked label. One of the contract tests bench/ls_versions.sh runs per release."""

from __future__ import annotations

import numpy as np
import pytest

from backend.sample_scenes import LABELS, draw_scene
from backend.tryout_project import SAMPLE_SIZE, label_config

from .ls_harness import brush_result, start_backend
from .queue_helpers import png_bytes

pytestmark = pytest.mark.e2e
SEED = 20263100


def _deep_inside(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` farthest from its edge (erosion until one more step would leave nothing)."""
    while True:
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        if not inner.any():
            return mask
        mask = inner


def test_a_clicked_instance_returns_the_others_through_label_studio(label_studio, tmp_path):
    from label_studio_sdk.converter.brush import decode_rle

    backend = start_backend(tmp_path / "backend", label_studio, extra_env={"SEGGPT_WEIGHTS": "tiny-appearance"})
    try:
        project = label_studio.create_project("marked instance click", label_config())
        scenes = [draw_scene(SEED + i, SAMPLE_SIZE) for i in range(2)]
        label_studio.upload(project, {f"click{i}.png": png_bytes(s.image) for i, s in enumerate(scenes)})
        tasks = label_studio.tasks(project)
        by_name = {t["data"]["image"].rsplit("-", 1)[-1]: t for t in tasks}
        label_studio.annotate(by_name["click0.png"]["id"], [brush_result(scenes[0].masks[label], label, f"a{label}", "brush", "image")
                                                            for label in LABELS])
        ml = label_studio.connect_backend(project, backend.url, backend.user, backend.password, interactive=True)
        target = scenes[1].masks["dotted"]
        ys, xs = np.nonzero(_deep_inside(target))
        middle = len(ys) // 2
        height, width = SAMPLE_SIZE
        point = {"original_width": width, "original_height": height, "image_rotation": 0, "is_positive": True, "id": "click1",
                 "from_name": "mark", "to_name": "image", "type": "keypointlabels", "origin": "manual",
                 "value": {"x": 100 * (xs[middle] + 0.5) / width, "y": 100 * (ys[middle] + 0.5) / height, "width": 0.3,
                           "labels": ["dotted"], "keypointlabels": ["dotted"]}}
        answer = label_studio.api("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                                  json={"task": by_name["click1.png"]["id"], "context": {"result": [point]}}).json()
        regions = answer["data"]["result"]
        assert regions and {r["value"]["brushlabels"][0] for r in regions} == {"dotted"}, answer
        painted = np.zeros(SAMPLE_SIZE, dtype=bool)
        for region in regions:
            painted |= decode_rle(region["value"]["rle"]).reshape(height, width, 4)[..., 3] > 0
        assert painted[ys[middle], xs[middle]], "the clicked instance is among the regions"
        assert all(0 <= r["score"] <= 1 for r in regions), "each instance region carries its own score"
    finally:
        backend.stop()
