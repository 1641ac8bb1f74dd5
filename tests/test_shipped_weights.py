"""The shipped small model, `tiny-shapes`: CI evaluates it (never retrains it). Floors sit a little under the
values measured when it was trained (see docs/benchmarks.md), so a regression anywhere on the path fails here."""

from __future__ import annotations

import pytest

from seggpt_core import Prompt, SegGptPredictor, build_model, load_model
from seggpt_core.evaluation import HELD_OUT_SEED, evaluate_synthetic
from seggpt_core.prompt_tuning import TuneSettings, tune_prompt
from seggpt_core.synthetic import category_scenes

ONE_SHOT_FLOOR = 0.41  # measured 0.4336 (issue 7's target, 0.75, is not reached yet: see docs/benchmarks.md)


@pytest.fixture(scope="module")
def predictor():
    return SegGptPredictor(load_model("tiny-shapes", device="cpu"))


@pytest.fixture(scope="module")
def one_shot(predictor):
    return evaluate_synthetic(predictor, 200)


def test_tiny_shapes_loads_by_name_with_its_config():
    model = load_model("tiny-shapes", device="cpu")
    assert model.config.half_size == (48, 48) and model.config.patch_size == 4
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_one_shot_miou_on_200_held_out_episodes(one_shot):
    assert sum(len(v) for v in one_shot.per_class.values()) == 200 and len(one_shot.per_class) == 5
    assert one_shot.miou >= ONE_SHOT_FLOOR, one_shot.class_means


def test_random_weights_of_the_same_config_score_below_0_3():
    random = SegGptPredictor(build_model(load_model("tiny-shapes", device="cpu").config, seed=0))
    assert evaluate_synthetic(random, 50).miou < 0.3


def test_feature_ensemble_of_5_scores_at_least_as_well_as_one_shot(predictor, one_shot):
    # the same seeds give the same targets and the same first prompt, plus four more prompts
    five = evaluate_synthetic(predictor, 200, shots=5)
    assert five.miou >= one_shot.miou, (five.class_means, one_shot.class_means)


def test_a_tuned_prompt_paints_held_out_targets_closer_to_the_truth(predictor):
    """Prompt tuning on 12 labeled scenes per category, SegGPT frozen: on 20 held-out targets the painting loss falls
    below one-shot's (the prompt it starts from). In mIoU the gain is still nil with this model (bench/prompt_tuning.py:
    0.4254 tuned vs 0.4250 one-shot), because tiny-shapes uses its prompt little."""
    import torch

    from seggpt_core.prompt_tuning import example_tensors
    from seggpt_core.training import balanced_loss

    model = predictor.model
    for offset, category in enumerate(("star", "triangle")):
        examples = [Prompt(s.image, {category: s.masks[category]}) for s in category_scenes(category, 12, HELD_OUT_SEED + 1_400_000 + 1000 * offset)]
        targets = [Prompt(s.image, {category: s.masks[category]}) for s in category_scenes(category, 20, HELD_OUT_SEED + 1_500_000 + 1000 * offset)]
        learned = tune_prompt(model, examples, TuneSettings(steps=60))
        images, canvases, foreground = example_tensors(model, targets, (category,))
        first_image, first_canvas, _ = example_tensors(model, examples[:1], (category,))
        count = len(targets)

        def loss(image: torch.Tensor, canvas: torch.Tensor) -> float:
            with torch.no_grad():
                painted = model(images, image.expand(count, -1, -1, -1), canvas.expand(count, -1, -1, -1), target_only=True)
            return balanced_loss(painted, canvases, foreground).item()

        assert loss(learned.image[None], learned.mask[None]) < loss(first_image, first_canvas), category
