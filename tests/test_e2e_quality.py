"""Measured quality through the whole path: held-out episodes sent through a real Label Studio (the prompt as an
annotation, the targets as tasks, predictions read back from the server) score like direct evaluation, on held-out
appearance-class episodes with the shipped `tiny-appearance`."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_core.research.evaluation import HELD_OUT_SEED, EvalReport, evaluate_episodes, iou
from seggpt_core.research.appearance import make_appearance_episode

from .ls_harness import brush_result, start_backend
from .queue_helpers import png_bytes, wait_for

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
</View>"""
EPISODES, TARGETS = 12, 3
# Seeds apart from training (below HELD_OUT_SEED), from `seggpt-ls eval` and from checkpoint selection.
FIRST_SEED = HELD_OUT_SEED + 900_000


def _read_back(prediction: dict, size: tuple[int, int]) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    mask = np.zeros(size, dtype=bool)
    for region in prediction["result"]:
        assert region["value"]["brushlabels"] == ["Object"]
        mask |= decode_rle(region["value"]["rle"]).reshape(*size, 4)[..., 3] > 127
    return mask


def test_episodes_through_label_studio_score_within_0_02_of_direct_evaluation(label_studio, tmp_path):
    from backend.prompt_pool import PromptPool
    from seggpt_core import SegGptPredictor, load_model

    episodes = [make_appearance_episode(FIRST_SEED + i, shots=1, targets=TARGETS) for i in range(EPISODES)]
    direct = evaluate_episodes(SegGptPredictor(load_model("tiny-appearance", device="cpu")), episodes)

    backend = start_backend(tmp_path / "backend", label_studio, extra_env={"SEGGPT_WEIGHTS": "tiny-appearance", "SEGGPT_NUM_PROMPTS": "1"})
    try:
        projects = []
        for index, episode in enumerate(episodes):
            category = episode.categories[0]
            project = label_studio.create_project(f"episode {index} ({category})", CONFIG)
            files = {"prompt.png": png_bytes(episode.prompts[0].image)}
            files.update({f"target{j}.png": png_bytes(t.image) for j, t in enumerate(episode.targets)})
            label_studio.upload(project, files)
            by_name = {t["data"]["image"].rsplit("-", 1)[-1]: t for t in label_studio.tasks(project)}
            label_studio.annotate(by_name["prompt.png"]["id"], [brush_result(episode.prompts[0].masks[category], "Object", "p", "tag", "image")])
            label_studio.connect_backend(project, backend.url, backend.user, backend.password)
            projects.append((project, by_name))
        connection = backend.redis()
        for project, _ in projects:
            wait_for(lambda: PromptPool(connection, project).size() == 1, 120, 0.2, f"the prompt pool of project {project}")

        through = EvalReport()
        for (project, by_name), episode in zip(projects, episodes):
            label_studio.retrieve_predictions(project)
            for j, target in enumerate(episode.targets):
                task = by_name[f"target{j}.png"]
                predictions = wait_for(lambda: label_studio.predictions(task["id"]), 120, 0.2, f"a prediction for task {task['id']}")
                assert len(predictions) == 1
                category = episode.categories[0]
                through.add(episode.group(category), iou(_read_back(predictions[0], target.image.size[::-1]), target.masks[category]))
    finally:
        backend.stop()
    print(f"direct mIoU {direct.miou:.4f}, through Label Studio {through.miou:.4f}")
    assert sum(len(v) for v in through.per_class.values()) == EPISODES * TARGETS
    assert direct.miou > 0.5  # the shipped model paints real masks (random weights: below 0.1), so the comparison means something
    assert abs(through.miou - direct.miou) <= 0.02, (through.class_means, direct.class_means)
