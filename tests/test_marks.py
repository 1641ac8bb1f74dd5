"""Marked instances in the open image: reading the smart tools' context (bodies recorded from the real frontend), finding
the marked instance, per-instance regions with their own scores, and the whole path on a real Redis and worker with
the shipped model: marking one instance brings back the others like it, and not the other class."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from backend.context_marks import ContextError, marks_from_context
from backend.label_config import Control, parse_label_config
from backend.ls_format import label_key, prediction_for
from backend.region_filter import RegionFilter
from seggpt_core.component_scores import ComponentScores
from seggpt_core.marks import Mark, MarkError, appearance_region, marked_instances
from seggpt_core.predictor import SegGptPredictor, Segmentation

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> dict:
    return json.loads((RECORDED / name).read_text())["body"]


def _scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Three discs of one color and two squares of another on a textured background, 120x160."""
    rng = np.random.default_rng(3)
    image = rng.normal(90, 12, size=(120, 160, 3)).clip(0, 255)
    yy, xx = np.mgrid[0:120, 0:160]
    discs = [((yy - cy) ** 2 + (xx - cx) ** 2) <= 13 ** 2 for cy, cx in ((30, 30), (85, 60), (40, 120))]
    squares = [(abs(yy - cy) <= 11) & (abs(xx - cx) <= 11) for cy, cx in ((90, 125), (90, 20))]
    for disc in discs:
        image[disc] = rng.normal((200, 60, 60), 10, size=(disc.sum(), 3))
    for square in squares:
        image[square] = rng.normal((60, 180, 70), 10, size=(square.sum(), 3))
    masks = {"disc": discs, "square": squares}
    return image.astype(np.uint8), masks


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_recorded_keypoint_and_rectangle_contexts_become_marks():
    body = recorded("predict_context_keypoint.json")
    controls = parse_label_config(body["label_config"])
    marks = marks_from_context(body["params"]["context"], controls)
    point = body["params"]["context"]["result"][0]["value"]
    [mark] = marks["image"]
    assert mark.label == label_key("brush", "Star") and mark.positive
    assert mark.point == pytest.approx((point["x"] / 100, point["y"] / 100))

    body = recorded("predict_context_rectangle.json")
    box = body["params"]["context"]["result"][0]["value"]
    [mark] = marks_from_context(body["params"]["context"], controls)["image"]
    assert mark.label == label_key("brush", "Disc")
    assert mark.box == pytest.approx((box["x"] / 100, box["y"] / 100, (box["x"] + box["width"]) / 100, (box["y"] + box["height"]) / 100))


def test_contexts_that_cannot_mark_an_instance_are_refused_by_name():
    body = recorded("predict_context_keypoint.json")
    controls = parse_label_config(body["label_config"])
    region = body["params"]["context"]["result"][0]
    with pytest.raises(ContextError, match=r"result\[0\]: label 'Cow' is not a label of any BrushLabels"):
        marks_from_context({"result": [{**region, "value": {**region["value"], "keypointlabels": ["Cow"], "labels": ["Cow"]}}]}, controls)
    with pytest.raises(ContextError, match=r"result\[0\]: mark for .Star.: coordinates"):
        marks_from_context({"result": [{**region, "value": {**region["value"], "x": 180.0}}]}, controls)
    with pytest.raises(ContextError, match="no positive mark"):
        marks_from_context({"result": [{**region, "is_positive": False}]}, controls)
    with pytest.raises(ContextError, match=r"result\[0\]: 'choices' regions cannot mark"):
        marks_from_context({"result": [{**region, "type": "choices", "value": {"choices": ["Star"]}}]}, controls)
    with pytest.raises(ContextError, match="must be a list"):
        marks_from_context({"result": "x"}, controls)


def test_a_drawn_brush_region_in_the_context_is_the_marked_instance_itself():
    from label_studio_sdk.converter.brush import mask2rle

    controls = parse_label_config(recorded("predict_context_keypoint.json")["label_config"])
    mask = np.zeros((24, 32), dtype=bool)
    mask[5:12, 4:9] = True
    region = {"from_name": "brush", "to_name": "image", "type": "brushlabels", "original_width": 32, "original_height": 24,
              "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Disc"]}}
    [mark] = marks_from_context({"result": [region]}, controls)["image"]
    assert mark.label == label_key("brush", "Disc") and np.array_equal(mark.mask, mask)


def test_the_marked_instance_comes_from_the_image_when_no_prompt_knows_the_label():
    image, truth = _scene()
    h, w = image.shape[:2]
    first = truth["disc"][0]
    from_point = appearance_region(image, Mark("d", point=(30 / w, 30 / h)))
    assert _iou(from_point, first) > 0.85
    from_box = appearance_region(image, Mark("d", box=(14 / w, 14 / h, 47 / w, 47 / h)))
    assert _iou(from_box, first) > 0.85
    # where nothing stands out, the ellipse the box encloses
    flat = np.full((40, 40, 3), 128, np.uint8)
    ellipse = appearance_region(flat, Mark("d", box=(0.25, 0.25, 0.75, 0.75)))
    assert ellipse[20, 20] and not ellipse[11, 11] and not ellipse[:9].any()


def test_a_first_pass_prediction_gives_the_component_under_the_mark_and_negatives_remove_theirs():
    image, truth = _scene()
    h, w = image.shape[:2]
    predicted = truth["disc"][0] | truth["disc"][1] | truth["square"][0]
    marks = [Mark("d", point=(30 / w, 30 / h)), Mark("d", box=(100 / w, 70 / h, 150 / w, 110 / h))]
    instance = marked_instances(image, marks, {"d": predicted})["d"]
    assert np.array_equal(instance, truth["disc"][0] | truth["square"][0])
    negative = marked_instances(image, marks + [Mark("d", point=(125 / w, 90 / h), positive=False)], {"d": predicted})["d"]
    assert np.array_equal(negative, truth["disc"][0])
    with pytest.raises(MarkError, match="only points can be negative"):
        Mark("d", box=(0.1, 0.1, 0.2, 0.2), positive=False)
    with pytest.raises(MarkError, match="mask is"):
        marked_instances(image, [Mark("d", mask=np.ones((5, 5), bool))])


def _decoded(indices: np.ndarray, confidence: np.ndarray, runner_up: np.ndarray) -> Segmentation:
    """A Segmentation decoded by the predictor from a made-up painting (one label, palette index 1)."""
    from seggpt_core import predictor as module

    original = module.lookup_colors
    module.lookup_colors = lambda rgb, palette: (indices, confidence, runner_up)
    try:
        result = Segmentation({}, {}, indices.shape)
        SegGptPredictor._decode(None, SimpleNamespace(palette=np.zeros((2, 3)), labels=["L"]), indices.shape, result)
    finally:
        module.lookup_colors = original
    return result


def test_each_component_keeps_its_own_score_and_one_component_scores_like_its_label():
    indices = np.zeros((40, 40), dtype=np.int64)
    indices[5:15, 5:15] = 1
    confidence = np.ones((40, 40))
    runner_up = np.zeros((40, 40), dtype=np.int64)
    alone = _decoded(indices, confidence, runner_up)
    assert alone.component_scores["L"].at(np.array([6]), np.array([6])) == pytest.approx(alone.scores["L"]) == pytest.approx(1.0)
    alone.component_scores["L"].factor = 0.5  # what the agreement score sets, with the label's score
    assert alone.component_scores["L"].at(np.array([6]), np.array([6])) == pytest.approx(0.5)

    indices[25:35, 25:35] = 1  # a second, uncertain instance with a fringe
    confidence[25:35, 25:35] = 0.2
    runner_up[23:37, 23:37] = 1
    runner_up[25:35, 25:35] = 0
    confidence[23:37, 23:37][runner_up[23:37, 23:37] == 1] = 0.1
    both = _decoded(indices, confidence, runner_up)
    crisp = both.component_scores["L"].at(np.array([6]), np.array([6]))
    weak = both.component_scores["L"].at(np.array([30]), np.array([30]))
    assert crisp == pytest.approx(1.0) and weak < 0.5 and weak < both.scores["L"] < crisp


def test_instance_regions_carry_their_own_scores_and_thresholds_apply_per_region():
    indices = np.zeros((40, 40), dtype=np.int64)
    indices[5:15, 5:15] = 1
    indices[25:35, 25:35] = 1
    confidence = np.ones((40, 40))
    confidence[25:35, 25:35] = 0.2
    segmentation = _decoded(indices, confidence, np.zeros((40, 40), dtype=np.int64))
    key = label_key("tag", "L")
    masks, scores, own = {key: segmentation.masks["L"]}, {key: segmentation.scores["L"]}, {key: segmentation.component_scores["L"]}
    brush = Control("tag", "brushlabels", "image", "image", ("L",))
    poly = Control("tag", "polygonlabels", "image", "image", ("L",))
    semantic = prediction_for(1, [brush], masks, scores, "v", component_scores=own)
    assert len(semantic["result"]) == 1 and semantic["result"][0]["score"] == pytest.approx(scores[key], abs=1e-4)
    for control, instances in ((brush, True), (poly, False)):
        regions = prediction_for(1, [control], masks, scores, "v", component_scores=own, instances=instances)["result"]
        assert sorted(r["score"] for r in regions) == [pytest.approx(0.6, abs=1e-4), pytest.approx(1.0)], control.kind
        kept = prediction_for(1, [control], masks, scores, "v", RegionFilter(score_threshold=0.8), own, instances)["result"]
        assert [r["score"] for r in kept] == [pytest.approx(1.0)], control.kind
        if control.kind == "brushlabels":
            from label_studio_sdk.converter.brush import decode_rle

            shown = decode_rle(kept[0]["value"]["rle"]).reshape(40, 40, 4)[..., 3] > 0
            assert shown[5:15, 5:15].all() and shown.sum() == 100  # the crisp instance alone


EPISODE_SEED = 10009018  # a held-out appearance episode whose target holds three instances of the label


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Embedded Redis, one worker with the shipped model, a media server with the target, and the app."""
    import cv2
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from backend.settings import Settings
    from seggpt_core.research.appearance import make_appearance_episode
    from worker import EmbeddedRedis

    from .media_server import MediaServer
    from .queue_helpers import start_worker

    root = tmp_path_factory.mktemp("marked_instances")
    episode = make_appearance_episode(EPISODE_SEED, shots=1, size=(120, 160), family="heldout")
    label = episode.categories[0]
    target = episode.targets[0]
    (root / "media").mkdir()
    buffer = io.BytesIO()
    target.image.save(buffer, format="PNG")
    (root / "media" / "target.png").write_bytes(buffer.getvalue())
    media = MediaServer(root / "media")
    server = EmbeddedRedis(root / "redis")
    connection = server.connect()
    worker = start_worker(root, "seggpt-interactive", "--weights", "tiny-appearance", log=root / "worker.log",
                          env={"ALLOWED_MEDIA_HOSTS": media.host})
    settings = Settings(weights="tiny-appearance", device="cpu", redis_url=server.url, allowed_media_hosts=(media.host,), predict_budget=60)
    count, components = cv2.connectedComponents(target.masks[label].astype(np.uint8), connectivity=8)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    marked = components == int(sizes.argmax())
    inner = cv2.distanceTransform(marked.astype(np.uint8), cv2.DIST_L2, 3)
    other_classes = [c for c in episode.classes if c != label and target.masks[c].any()]
    with TestClient(create_app(settings)) as client:
        yield SimpleNamespace(client=client, redis=connection, url=f"{media.url}/target.png", episode=episode, label=label,
                              target=target, marked=marked, center=np.unravel_index(int(inner.argmax()), inner.shape),
                              other=other_classes[0])
    worker.terminate()
    worker.wait(30)
    media.stop()
    server.stop()


def _ask(stack, project: int, region: dict) -> tuple[np.ndarray, list[dict]]:
    """POST the recorded interactive body with `region` as its context; returns the union of the answered masks
    and the regions, after checking each region's shape."""
    union, regions = _ask_many(stack, project, [region])
    for item in regions:
        assert (item["from_name"], item["type"], item["value"]["brushlabels"]) == ("brush", "brushlabels", [stack.label])
        assert 0 < item["score"] <= 1
    return union, regions


def _point_region(stack, y: int, x: int, label: str, positive: bool = True) -> dict:
    region = recorded("predict_context_keypoint.json")["params"]["context"]["result"][0]
    return {**region, "original_width": 160, "original_height": 120, "is_positive": positive,
            "value": {**region["value"], "x": 100 * (x + 0.5) / 160, "y": 100 * (y + 0.5) / 120, "keypointlabels": [label], "labels": [label]}}


def test_marking_one_instance_returns_the_others_like_it(stack):
    truth = stack.target.masks[stack.label]
    others = truth & ~stack.marked
    found, regions = _ask(stack, 7101, _point_region(stack, *stack.center, stack.label))
    assert len(regions) >= 2  # one region per instance
    assert _iou(found, truth) > 0.65
    assert (found & others).sum() / others.sum() > 0.8  # the instances that were not marked
    rest = np.zeros_like(truth)
    for name, mask in stack.target.masks.items():
        if name != stack.label:
            rest |= mask
    assert (found & rest).sum() / found.sum() < 0.15


def test_the_mark_is_read_marking_another_class_finds_that_class(stack):
    """Prompt reading, measured directly: the same image, a point on an instance of another class."""
    import cv2

    other = stack.target.masks[stack.other]
    inner = cv2.distanceTransform(other.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(inner.argmax()), inner.shape)
    found, _ = _ask(stack, 7102, _point_region(stack, y, x, stack.label))
    own, _ = _ask(stack, 7103, _point_region(stack, *stack.center, stack.label))
    truth = stack.target.masks[stack.label]
    assert _iou(found, truth) < 0.3 * _iou(own, truth)
    assert (found & other).sum() > 0.5 * found.sum()


def test_a_box_with_pool_prompts_and_a_negative_point(stack):
    """The pool's prompt for the label takes part (the first pass finds the boxed instance); a negative point on
    one of the found instances leaves it out."""
    import cv2

    from backend.prompt_pool import PromptPool
    from label_studio_sdk.converter.brush import mask2rle

    project = 7104
    body = recorded("predict_context_keypoint.json")
    config = body["label_config"].replace('"Star"', f'"{stack.label}"')
    pool = PromptPool(stack.redis, project)
    controls = parse_label_config(config)
    pool.save_controls(controls, config)
    prompt = stack.episode.prompts[0]
    buffer = io.BytesIO()
    prompt.image.save(buffer, format="PNG")
    result = [{"from_name": "brush", "to_name": "image", "type": "brushlabels", "id": "p1",
               "value": {"format": "rle", "rle": mask2rle(prompt.masks[stack.label].astype(np.uint8) * 255), "brushlabels": [stack.label]}}]
    pool.upsert({"id": 1, "data": {"image": "x"}}, {"id": 1, "result": result, "updated_at": "1"}, controls, lambda v, t: buffer.getvalue())
    ys, xs = np.nonzero(stack.marked)
    box = recorded("predict_context_rectangle.json")["params"]["context"]["result"][0]
    box = {**box, "original_width": 160, "original_height": 120,
           "value": {**box["value"], "x": 100 * xs.min() / 160, "y": 100 * ys.min() / 120, "width": 100 * (xs.max() + 1 - xs.min()) / 160,
                     "height": 100 * (ys.max() + 1 - ys.min()) / 120, "rectanglelabels": [stack.label]}}
    found, regions = _ask(stack, project, box)
    truth = stack.target.masks[stack.label]
    assert _iou(found, truth) > 0.65 and len(regions) >= 2
    # a negative point on the smallest instance found (not the boxed one) takes it out
    count, components = cv2.connectedComponents(found.astype(np.uint8), connectivity=8)
    smallest = min(range(1, count), key=lambda i: (components == i).sum())
    cy, cx = [int(v) for v in np.argwhere(components == smallest)[len(np.argwhere(components == smallest)) // 2]]
    without, _ = _ask_many(stack, project, [box, _point_region(stack, cy, cx, stack.label, positive=False)])
    assert not without[cy, cx] and without[stack.marked].mean() > 0.8


def _ask_many(stack, project: int, regions: list[dict]):
    from label_studio_sdk.converter.brush import decode_rle

    body = recorded("predict_context_keypoint.json")
    config = body["label_config"].replace('"Star"', f'"{stack.label}"')
    task = {**body["tasks"][0], "data": {"image": stack.url}}
    response = stack.client.post("/predict", json={**body, "tasks": [task], "project": f"{project}.1", "label_config": config,
                                                  "params": {**body["params"], "context": {"result": regions}}})
    assert response.status_code == 200, response.text
    [answer] = response.json()["results"]
    union = np.zeros((120, 160), dtype=bool)
    for item in answer["result"]:
        union |= decode_rle(item["value"]["rle"]).reshape(120, 160, 4)[..., 3] > 0
    return union, answer["result"]


def test_a_context_that_names_no_known_label_is_a_clear_422(stack):
    region = _point_region(stack, 10, 10, "Nope")
    body = recorded("predict_context_keypoint.json")
    response = stack.client.post("/predict", json={**body, "tasks": [{**body["tasks"][0], "data": {"image": stack.url}}],
                                                  "project": "7105.1", "params": {"context": {"result": [region]}}})
    assert response.status_code == 422 and "result[0]: label 'Nope'" in response.json()["detail"]


def test_the_agreement_score_reaches_each_instance_region():
    from seggpt_core import load_model
    from seggpt_core.predictor import Prompt

    image, truth = _scene()
    model = load_model("tiny-appearance", device="cpu")
    crisp, agreeing = SegGptPredictor(model), SegGptPredictor(model, score="agreement")
    prompts = [Prompt(image, {"disc": truth["disc"][0] | truth["disc"][1]})]
    for predictor in (crisp, agreeing):
        predictor.set_prompts(prompts)
    [one], [two] = crisp.predict([image]), agreeing.predict([image])
    factor = two.component_scores["disc"].factor
    assert 0 < factor <= 1 and two.scores["disc"] == pytest.approx(one.scores["disc"] * factor)
    rows, cols = np.nonzero(truth["disc"][2])
    assert two.component_scores["disc"].at(rows, cols) == pytest.approx(one.component_scores["disc"].at(rows, cols) * factor)
