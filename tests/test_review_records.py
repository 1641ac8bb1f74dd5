"""Review records, calibration and the report's numbers on hand-made predictions and annotations; the store, the
calibrated thresholds in the model version and prompt exclusion on a real (embedded) Redis."""

from __future__ import annotations

import numpy as np
import pytest

from backend.calibration import calibrate, edits_at, project_settings
from backend.label_config import parse_label_config
from backend.predict_service import current_model_version
from backend.prompt_pool import PromptPool
from backend.review_records import compare_results, made_from, review_record
from backend.review_report import review_metrics, summarize
from backend.review_store import load_records, record_prompts_used, save_record, save_summary
from backend.settings import Settings
from worker import EmbeddedRedis

from .ls_harness import brush_result

CONFIG = """<View><Image name="img" value="$image"/>
<BrushLabels name="mask" toName="img"><Label value="Cat"/><Label value="Dog"/></BrushLabels></View>"""
CONTROLS = parse_label_config(CONFIG)


def _box(top: int, left: int, size: int = 10, shape=(40, 40)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


def _region(mask, label, rid, score=None) -> dict:
    region = brush_result(mask, label, rid, "mask", "img")
    return region if score is None else {**region, "score": score}


def test_regions_are_kept_deleted_and_added_by_iou_and_the_label_iou_is_of_the_unions():
    predicted = [_region(_box(0, 0), "Cat", "a", 0.9),       # matches the annotated box at IoU 0.8 (kept)
                 _region(_box(25, 25), "Cat", "b", 0.2),     # nothing there (deleted)
                 _region(_box(0, 20), "Dog", "c", 0.7)]      # moved by 6 px: IoU 4/16 (deleted, the moved one added)
    annotated = [_region(_box(0, 0, 9), "Cat", "x"), _region(_box(0, 26), "Dog", "y"), _region(_box(20, 0), "Cat", "z")]
    labels = compare_results(predicted, annotated, CONTROLS)
    assert labels["Cat"]["kept"] == 1 and labels["Cat"]["deleted"] == 1 and labels["Cat"]["added"] == 1
    assert labels["Dog"] == {"iou": pytest.approx(40 / 160), "kept": 0, "deleted": 1, "added": 1, "regions": [[0.7, 0.25, 0]]}
    # Cat: predicted 200 px, annotated 81 + 100, overlap 81
    assert labels["Cat"]["iou"] == pytest.approx(81 / (200 + 181 - 81), abs=1e-6)
    assert labels["Cat"]["regions"] == [[0.9, 0.81, 1], [0.2, 0.0, 0]]


def test_the_record_uses_the_parent_prediction_and_knows_an_unchanged_acceptance():
    ours = {"id": 7, "model_version": "seggpt-aaa", "created_at": "2026-01-01T00:00:00Z", "result": [_region(_box(5, 5), "Cat", "a", 0.8)]}
    newer = {"id": 8, "model_version": "seggpt-bbb", "created_at": "2026-01-02T00:00:00Z", "result": []}
    theirs = {"id": 9, "model_version": "other-model", "created_at": "2026-01-01T00:00:00Z", "result": []}
    accepted = {"id": 3, "parent_prediction": 7, "lead_time": 2.5, "created_at": "2026-01-03T00:00:00Z", "result": ours["result"]}
    record = review_record(11, accepted, [ours, newer, theirs], CONTROLS, {"mask\x1fCat": [41, 42]})
    assert record["prediction"] == 7 and record["model_version"] == "seggpt-aaa" and record["accepted"] is True
    assert record["prompts"] == {"Cat": [41, 42]} and record["lead_time"] == 2.5
    # without parent_prediction: our newest prediction made before the annotation
    assert made_from({"created_at": "2026-01-05T00:00:00Z"}, [ours, newer, theirs])["id"] == 8
    assert made_from({"created_at": "2026-01-01T12:00:00Z"}, [ours, newer, theirs])["id"] == 7
    # made from another model's prediction, or from scratch: no comparison, only the lead time
    assert review_record(11, {"id": 4, "parent_prediction": 9, "lead_time": 9.0}, [theirs], CONTROLS) == {
        "task": 11, "annotation": 4, "lead_time": 9.0, "updated_at": "", "from_prediction": False}
    edited = review_record(11, {**accepted, "result": [_region(_box(5, 6), "Cat", "a")]}, [ours], CONTROLS)
    assert edited["accepted"] is False and edited["labels"]["Cat"]["kept"] == 1


def test_the_calibrated_threshold_minimises_edits_and_needs_enough_regions():
    # [score, IoU, kept]: the low scores are the deleted ones, one kept region scores low too
    regions = [[0.1, 0.0, 0], [0.2, 0.1, 0], [0.3, 0.0, 0], [0.35, 0.8, 1], [0.6, 0.9, 1], [0.7, 0.2, 0], [0.8, 0.9, 1]]
    assert edits_at(regions, 2, 0.0) == 2 + 4
    result = calibrate(regions, 2, min_regions=5)
    # cutting below 0.35 removes 3 deletions for no kept region: 3 edits; above 0.35 trades one kept for nothing
    assert result == {"threshold": 0.325, "edits_at_zero": 6, "edits": 3, "saved": 3, "regions": 7}
    assert calibrate(regions, 2, min_regions=8)["threshold"] is None


def _record(task, version, cat_iou_regions, accepted=False, lead=3.0, prompts=None):
    deleted = sum(1 for r in cat_iou_regions if not r[2])
    return {"task": task, "annotation": 100 + task, "lead_time": lead, "updated_at": f"2026-01-{task:02d}", "from_prediction": True,
            "prediction": task, "model_version": version, "parent": True, "accepted": accepted,
            "labels": {"Cat": {"iou": 1.0 if accepted else 0.5, "kept": len(cat_iou_regions) - deleted, "deleted": deleted, "added": 0,
                               "regions": cat_iou_regions}, "Ghost": {"iou": 0.0, "kept": 0, "deleted": 1, "added": 0, "regions": [[0.1, 0, 0]]}},
            "prompts": prompts or {}}


def test_the_summary_counts_per_label_and_version_and_only_names_the_configs_labels():
    records = [_record(1, "seggpt-a", [[0.9, 1.0, 1]], accepted=True, lead=2.0, prompts={"Cat": [5]}),
               _record(2, "seggpt-a", [[0.8, 0.7, 1], [0.1, 0.0, 0]], prompts={"Cat": [5, 6]}),
               _record(3, "seggpt-b", [[0.2, 0.0, 0]], prompts={"Cat": [6]}),
               {"task": 4, "annotation": 104, "lead_time": 10.0, "updated_at": "2026-01-04", "from_prediction": False}]
    summary = summarize(12, records, ["Cat", "Dog"], min_regions=3)
    assert list(summary["labels"]) == ["Cat"]  # "Ghost" is not in the config; "Dog" was never reviewed
    cat = summary["labels"]["Cat"]
    assert cat["reviewed"] == 3 and cat["mean_iou"] == pytest.approx(2 / 3) and cat["accepted_share"] == pytest.approx(1 / 3)
    assert (cat["regions_deleted"], cat["regions_added"], cat["threshold"], cat["edits_saved"]) == (2, 0, 0.5, 2)
    assert list(summary["versions"]) == ["seggpt-a", "seggpt-b"] and summary["versions"]["seggpt-b"]["mean_iou"] == 0.5
    assert summary["prompts"] == {"5": {"predictions": 2, "mean_iou": 0.75}, "6": {"predictions": 2, "mean_iou": 0.5}}
    assert summary["lead_time"]["from_prediction"] == pytest.approx(8 / 3)
    assert summary["lead_time"]["from_scratch"] == 10.0 and summary["tasks_from_scratch"] == 1


@pytest.fixture(scope="module")
def connection(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("review") / "redis")
    yield server.connect()
    server.stop()


def test_records_are_bounded_per_project_and_feed_metrics_with_config_labels_only(connection):
    for task in range(1, 6):
        save_record(connection, 3, _record(task, "seggpt-a", [[0.9, 1.0, 1]]), max_records=3)
    assert [r["task"] for r in load_records(connection, 3)] == [3, 4, 5]  # the oldest went first
    assert 0 < connection.ttl("seggpt:review:3:records") <= 180 * 24 * 3600
    save_summary(connection, 3, summarize(3, load_records(connection, 3), ["Cat"], 1))
    metrics = review_metrics(connection)
    assert metrics["review_iou"][1] == {("3", "Cat"): 0.5}
    assert metrics["review_edits_per_task"][1] == {("3", "Cat"): 0.0}


def test_auto_thresholds_enter_the_model_version_and_explicit_ones_win(connection):
    pool = PromptPool(connection, 5)
    pool.save_controls(CONTROLS, CONFIG)
    save_summary(connection, 5, {"labels": {"Cat": {"threshold": 0.4}, "Dog": {"threshold": None}}})
    off = Settings(weights="random:tiny")
    on = off.with_(auto_thresholds=True)
    assert project_settings(connection, off, 5) is off
    assert project_settings(connection, on, 5).region_filter.label_thresholds == {"Cat": 0.4}
    assert project_settings(connection, on.with_(label_thresholds="Cat=0.7"), 5).region_filter.label_thresholds == {"Cat": 0.7}
    versions = {current_model_version(connection, s, 5, "digest") for s in (off, on)}
    assert len(versions) == 2
    save_summary(connection, 5, {"labels": {"Cat": {"threshold": 0.45}}})
    assert current_model_version(connection, on, 5, "digest") not in versions


def test_excluding_a_prompt_changes_the_version_and_leaves_it_out_of_prompt_sets(connection):
    pool = PromptPool(connection, 6)
    pool.save_controls(CONTROLS, CONFIG)
    for task, annotation in ((1, 31), (2, 32)):
        mask = _box(5, 5)
        pool.upsert({"id": task, "data": {"image": f"http://x/{task}.png"}}, {"id": annotation, "updated_at": f"2026-01-0{task}",
                    "result": [_region(mask, "Cat", f"r{task}")]}, CONTROLS, lambda value, task_id: _png(mask))
    before = pool.version()
    assert pool.prompt_set_with_sources("image", CONTROLS, 8)[1] == [32, 31]
    pool.set_excluded([31])
    assert pool.version() != before
    assert pool.prompt_set_with_sources("image", CONTROLS, 8)[1] == [32]
    assert pool.prompt_set_with_sources("image", CONTROLS, 8, exclude=Settings(exclude_prompts="32").excluded_prompts)[0] is None
    assert Settings(exclude_prompts="32").fingerprint()["excluded_prompts"] == [32]
    with pytest.raises(ValueError, match="SEGGPT_EXCLUDE_PROMPTS"):
        Settings(exclude_prompts="a,b")
    record_prompts_used(connection, 6, "seggpt-x", 1, [32, 31], {"mask\x1fCat": (1, 0)})
    from backend.review_store import prompts_used

    assert prompts_used(connection, 6, "seggpt-x", 1) == {"mask\x1fCat": [31, 32]}


def _png(mask) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.dstack([mask] * 3) * 200).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
