"""The shipped small model, `tiny-appearance`: CI evaluates it (never retrains it). Floors sit a little under the
values measured when it was trained (docs/benchmarks.md, `bench/quality.py`), so a regression anywhere on the path
fails here. Each figure is measured on 200 held-out episodes, except where a comment says otherwise."""

from __future__ import annotations

import pytest

from seggpt_core import SegGptPredictor, build_model, load_model
from seggpt_core.research.evaluation import evaluate_synthetic

# measured values (bench/quality.py, bench/prompt_strategy.py, bench/prompt_tuning.py): docs/benchmarks.md
ONE_SHOT_FLOOR = 0.75  # issue 14's goal; measured 0.7878
SWAP_RATIO_CEILING = 0.3  # issue 14's goal; measured 0.1255
SPEARMAN_FLOOR = 0.25  # the crisp score (the default); measured 0.310
AGREEMENT_SPEARMAN_FLOOR = 0.5  # issue 14's goal, met by score="agreement"; measured 0.559
HELDOUT_FLOOR = 0.6  # measured 0.658 on 200 episodes
ENSEMBLE_GAIN_FLOOR = 0.03  # issue 14's goal, at jitter 32; measured +0.0366 (+0.0001 at jitter 16: docs/benchmarks.md)
SIMILAR_GAIN_FLOOR = 0.05  # measured +0.098 at K=1 on 200 episodes (+0.069 at K=3); issue 14's goal 0.03
TUNED_GAIN_FLOOR = 0.05  # issue 14's goal 0.03, at jitter 32; measured +0.0676 (+0.023 at jitter 16: docs/benchmarks.md)
TUNE_STEPS = 150


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-appearance", device="cpu")


@pytest.fixture(scope="module")
def predictor(model):
    return SegGptPredictor(model)


@pytest.fixture(scope="module")
def one_shot(predictor):
    return evaluate_synthetic(predictor, 200, prompt_swap=True)


def test_tiny_appearance_loads_by_name_with_its_config(model):
    assert model.config.half_size == (48, 48) and model.config.patch_size == 4
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert model.config.labels_per_forward == 1  # trained on one color: one label per forward by default
    assert SegGptPredictor(model).labels_per_forward == 1


def test_one_shot_miou_on_200_held_out_episodes(one_shot):
    assert sum(len(v) for v in one_shot.per_class.values()) == 200 and len(one_shot.per_class) == 6  # six textures
    assert one_shot.miou >= ONE_SHOT_FLOOR, one_shot.class_means


def test_it_reads_its_prompt(one_shot):
    """Another class's mask on the same prompt image: the same target must score far lower."""
    assert one_shot.swapped_miou <= SWAP_RATIO_CEILING * one_shot.miou, (one_shot.swapped_miou, one_shot.miou)


def test_the_score_orders_masks_by_quality(one_shot):
    assert one_shot.score_iou_spearman >= SPEARMAN_FLOOR


def test_the_agreement_score_orders_masks_for_review(model, one_shot):
    """The crisp score times the agreement with the mirrored target's painting: the same masks, better ordered."""
    agreeing = evaluate_synthetic(SegGptPredictor(model, score="agreement"), 200)
    assert agreeing.miou == pytest.approx(one_shot.miou, abs=1e-9)
    assert agreeing.score_iou_spearman >= AGREEMENT_SPEARMAN_FLOOR
    assert agreeing.score_iou_spearman > one_shot.score_iou_spearman + 0.15


def test_random_weights_of_the_same_config_score_below_0_1(model):
    assert evaluate_synthetic(SegGptPredictor(build_model(model.config, seed=0)), 50).miou < 0.1


def test_it_reads_its_prompt_on_the_held_out_family_too(predictor):
    held = evaluate_synthetic(predictor, 100, prompt_swap=True, family="heldout")
    assert held.miou >= HELDOUT_FLOOR and held.swapped_miou <= 0.5 * held.miou, (held.miou, held.swapped_miou)


def test_the_feature_ensemble_pays_where_one_prompt_cannot_show_how_instances_vary(predictor):
    """The same targets and first prompt, plus four more prompts. At jitter 32 (instances spread in brightness
    beyond anything one-shot training drew, so that one prompt's instances miss much of the target's spread) five
    prompts must do at least 0.03 better; at jitter 16, where one prompt already nearly reaches the model's
    no-variation quality, they must cost nothing."""
    one = evaluate_synthetic(predictor, 200, jitter=32.0)
    five = evaluate_synthetic(predictor, 200, shots=5, jitter=32.0)
    assert five.miou >= one.miou + ENSEMBLE_GAIN_FLOOR, (five.miou, one.miou)
    mild_one = evaluate_synthetic(predictor, 200, jitter=16.0)
    mild_five = evaluate_synthetic(predictor, 200, shots=5, jitter=16.0)
    assert mild_five.miou >= mild_one.miou - 0.01, (mild_five.miou, mild_one.miou)


def test_similar_prompts_beat_recent_ones_on_pools_under_two_lights(predictor):
    from seggpt_core.research.evaluation import evaluate_prompt_strategies
    from worker.selection import select

    reports, same_light = evaluate_prompt_strategies(predictor, 100, select, ks=(1,))
    assert same_light[("similar", 1)] >= 0.8 and 0.3 <= same_light[("recent", 1)] <= 0.7
    assert reports[("similar", 1)].miou >= reports[("recent", 1)].miou + SIMILAR_GAIN_FLOOR


def test_a_tuned_prompt_beats_one_shot_on_held_out_targets(model):
    """Prompt tuning on 16 labeled scenes of a project, SegGPT frozen: 5 projects of 40 held-out targets each (the
    200 of bench/prompt_tuning.py), whose instances vary (jitter 32) so that one labeled scene cannot show them all."""
    from seggpt_core.research.evaluation import evaluate_prompt_tuning

    reports = evaluate_prompt_tuning(model, 5, examples=16, targets=40, steps=TUNE_STEPS, jitter=32.0)
    assert sum(len(values) for values in reports["tuned"].per_class.values()) == 200
    assert reports["tuned"].miou >= reports["one-shot"].miou + TUNED_GAIN_FLOOR, {k: r.miou for k, r in reports.items()}
