"""Thresholds and the minimum area: which predicted regions reach the annotator, and the model version they give."""

from __future__ import annotations

import numpy as np
import pytest

from backend.label_config import Control, parse_label_config
from backend.ls_format import label_key, prediction_for
from backend.predict_service import model_version
from backend.region_filter import RegionFilter, parse_label_thresholds, parse_min_area
from backend.settings import Settings

BRUSH = Control("tag", "brushlabels", "image", "image", ("Cat", "Dog"))
POLY = Control("poly", "polygonlabels", "image", "image", ("Cat",))


def _masks() -> tuple[dict, dict]:
    cat = np.zeros((100, 100), bool)
    cat[10:40, 10:40] = True  # 900 px
    cat[80:83, 80:83] = True  # a 9 px speck
    dog = np.zeros((100, 100), bool)
    dog[60:70, 10:20] = True  # 100 px
    masks = {label_key("tag", "Cat"): cat, label_key("tag", "Dog"): dog, label_key("poly", "Cat"): cat}
    scores = {label_key("tag", "Cat"): 0.8, label_key("tag", "Dog"): 0.3, label_key("poly", "Cat"): 0.8}
    return masks, scores


def _labels(prediction: dict) -> list[tuple[str, str]]:
    """(control, label) of the regions, once each (polygons give one region per component)."""
    return sorted({(r["from_name"], r["value"].get("brushlabels", r["value"].get("polygonlabels"))[0]) for r in prediction["result"]})


def test_each_threshold_leaves_out_the_regions_below_it():
    masks, scores = _masks()
    controls = [BRUSH, POLY]
    assert _labels(prediction_for(1, controls, masks, scores, "v")) == [("poly", "Cat"), ("tag", "Cat"), ("tag", "Dog")]
    assert _labels(prediction_for(1, controls, masks, scores, "v", RegionFilter(score_threshold=0.5))) == [("poly", "Cat"), ("tag", "Cat")]
    assert _labels(prediction_for(1, controls, masks, scores, "v", RegionFilter(label_thresholds={"Cat": 0.9}))) == [("tag", "Dog")]
    strict_control = Control("tag", "brushlabels", "image", "image", ("Cat", "Dog"), score_threshold=0.85)
    assert _labels(prediction_for(1, [strict_control, POLY], masks, scores, "v")) == [("poly", "Cat")]


def test_the_minimum_area_drops_small_regions_and_small_components():
    masks, scores = _masks()
    assert len([r for r in prediction_for(1, [POLY], masks, scores, "v")["result"]]) == 2  # the square and the speck
    kept = prediction_for(1, [BRUSH, POLY], masks, scores, "v", RegionFilter(min_area_pixels=200))
    assert _labels(kept) == [("poly", "Cat"), ("tag", "Cat")]  # the 100 px dog is gone
    polygons = [r for r in kept["result"] if r["from_name"] == "poly"]
    assert len(polygons) == 1  # the 9 px speck is not a component of its own any more
    share = prediction_for(1, [POLY], masks, scores, "v", RegionFilter(min_area_share=parse_min_area("0.05%")[1]))  # 5 px
    assert len(share["result"]) == 2  # the speck (9 px) clears 0.05% of 10,000 px


def test_a_task_whose_regions_are_all_left_out_scores_zero():
    masks, scores = _masks()
    prediction = prediction_for(1, [BRUSH, POLY], masks, scores, "v", RegionFilter(score_threshold=0.95))
    assert prediction == {"result": [], "score": 0.0, "model_version": "v"}


def test_settings_parse_and_refuse_bad_values_naming_the_setting():
    assert parse_label_thresholds("Cat=0.6, Dog = 0.3") == {"Cat": 0.6, "Dog": 0.3}
    assert parse_min_area("200") == (200, 0) and parse_min_area("0.5%") == (0, 0.005) and parse_min_area("0.01") == (0, 0.01)
    assert parse_min_area("100%") == (0, 1.0)
    with pytest.raises(ValueError, match="SEGGPT_LABEL_THRESHOLDS: 'Cat' is not"):
        Settings(label_thresholds="Cat")
    with pytest.raises(ValueError, match="SEGGPT_MIN_AREA"):
        Settings(min_area="big")
    with pytest.raises(ValueError, match="SEGGPT_SCORE_THRESHOLD"):
        Settings(score_threshold=1.5)
    config = """<View><Image name="image" value="$image"/>
      <BrushLabels name="tag" toName="image" model_score_threshold="0.4"><Label value="Cat"/></BrushLabels></View>"""
    assert parse_label_config(config)[0].score_threshold == 0.4


def test_every_threshold_takes_part_in_the_model_version():
    base = Settings(weights="random:tiny")
    versions = {
        model_version(base, "pool", "w"),
        model_version(base.with_(score_threshold=0.5), "pool", "w"),
        model_version(base.with_(label_thresholds="Cat=0.5"), "pool", "w"),
        model_version(base.with_(min_area="200"), "pool", "w"),
        model_version(base, "pool", "w", [Control("tag", "brushlabels", "image", "image", ("Cat",), score_threshold=0.5)]),
    }
    assert len(versions) == 5
    assert model_version(base, "pool", "w", [BRUSH]) == model_version(base, "pool", "w")  # no threshold, no change
