"""Training mechanics of the small SegGPT (the quality itself is measured by `seggpt-ls eval`, not in tests)."""

from __future__ import annotations

import pytest
import torch

from seggpt_core import load_model
from seggpt_core.loss import balanced_loss
from seggpt_core.research.training import TrainSettings, make_batch, train


def test_balanced_loss_gives_foreground_and_background_equal_weight():
    labels = torch.zeros(1, 3, 10, 10)
    foreground = torch.zeros(1, 10, 10, dtype=torch.bool)
    foreground[0, :1] = True  # 10% foreground
    labels[:, :, :1] = 2.0
    all_background = torch.zeros_like(labels)
    all_foreground = torch.full_like(labels, 2.0)
    assert torch.isclose(balanced_loss(all_background, labels, foreground), balanced_loss(all_foreground, labels, foreground))
    assert balanced_loss(labels, labels, foreground).item() == 0.0


def test_distractor_weight_makes_painting_other_shapes_cost_its_share():
    labels = torch.zeros(1, 3, 10, 10)
    foreground = torch.zeros(1, 10, 10, dtype=torch.bool)
    others = torch.zeros(1, 10, 10, dtype=torch.bool)
    foreground[0, :1] = True  # 10% the category, 10% other shapes, 80% plain background
    others[0, 1:2] = True
    labels[:, :, :1] = 2.0
    exact = labels.clone()
    painted_others = labels.clone()
    painted_others[:, :, 1:2] = 2.0
    plain_only = balanced_loss(painted_others, labels, foreground)  # other shapes are 1/9 of the background there
    weighted = balanced_loss(painted_others, labels, foreground, others, distractor_weight=0.2)
    assert balanced_loss(exact, labels, foreground, others, 0.2).item() == 0.0
    assert torch.isclose(weighted, torch.tensor(0.2 * 2.0), atol=1e-3)  # their whole share, an error of 2 per pixel
    assert weighted > 3 * plain_only


def test_appearance_batches_pair_the_same_images_with_two_labels():
    batch = make_batch([3, 4, 5], (48, 48))
    assert batch["pixel_values"].shape == (6, 3, 48, 48) and batch["foreground"].shape == (6, 48, 48)
    for pair in range(3):
        first, second = 2 * pair, 2 * pair + 1
        # identical images, different prompt masks and answers
        assert torch.equal(batch["pixel_values"][first], batch["pixel_values"][second])
        assert torch.equal(batch["prompt_pixel_values"][first], batch["prompt_pixel_values"][second])
        assert not torch.equal(batch["prompt_masks"][first], batch["prompt_masks"][second])
        assert batch["foreground"][first].any() and batch["foreground"][second].any()
        assert not (batch["foreground"][first] & batch["foreground"][second]).any()  # two classes never overlap
    # painted in white (the color of a label painted alone) on black
    from seggpt_core.transforms import IMAGENET_MEAN, IMAGENET_STD

    white = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    painted = batch["labels"].permute(0, 2, 3, 1)[batch["foreground"]]
    assert torch.allclose(painted, white.expand_as(painted))
    assert torch.allclose(batch["prompt_masks"].amax(dim=(0, 2, 3)), batch["labels"].amax(dim=(0, 2, 3)))


def test_multi_prompt_batches_group_k_prompts_of_one_target_for_the_feature_ensemble():
    batch = make_batch([3, 4], (48, 48), shots=3, jitter=(24.0, 24.0))
    # two seeds x two paired labels = 4 groups of 3 prompt rows, one label row per group
    assert batch["pixel_values"].shape == (12, 3, 48, 48) and batch["labels"].shape == (4, 3, 48, 48)
    for group in range(4):
        rows = range(3 * group, 3 * group + 3)
        assert all(torch.equal(batch["pixel_values"][r], batch["pixel_values"][3 * group]) for r in rows)
        prompts = [batch["prompt_pixel_values"][r] for r in rows]
        assert not torch.equal(prompts[0], prompts[1]) and not torch.equal(prompts[1], prompts[2])  # K scenes
    # the two labels of a seed: same target and prompts, different masks and answers
    assert torch.equal(batch["prompt_pixel_values"][:3], batch["prompt_pixel_values"][3:6])
    assert not torch.equal(batch["prompt_masks"][:3], batch["prompt_masks"][3:6])
    assert not (batch["foreground"][0] & batch["foreground"][1]).any()
    model = load_model("tiny-appearance", device="cpu")
    painted = model(batch["pixel_values"], batch["prompt_pixel_values"], batch["prompt_masks"], num_prompts=3,
                    target_only=True)
    assert painted.shape == batch["labels"].shape


def test_multi_prompt_training_reports_the_varied_ensemble_and_needs_appearance(tmp_path):
    lines = []
    best = train(TrainSettings(steps=2, batch=2, warmup=1, eval_every=2, eval_episodes=2, init="tiny-appearance",
                               lr=1e-4, ensemble_shots=2, ensemble_batch=1), tmp_path / "w", log=lines.append)
    assert 0.0 <= best["varied_one_shot"] <= 1.0 and 0.0 <= best["varied_five_shot"] <= 1.0
    assert best["merit"] == pytest.approx((best["miou"] + best["varied_five_shot"]) / 2)
    assert any("5-shot" in line for line in lines)
    with pytest.raises(ValueError, match="ensemble_shots=1 needs at least 2 shots"):
        TrainSettings(ensemble_shots=1)
    with pytest.raises(ValueError, match="the appearance task"):
        TrainSettings(ensemble_shots=3, task="shapes")


def test_shape_batches_keep_the_old_recipe():
    batch = make_batch([3, 4], (48, 48), task="shapes")
    assert batch["pixel_values"].shape == (2, 3, 48, 48)
    for index in range(2):
        prompt_color = batch["prompt_masks"][index].flatten(1).max(dim=1).values
        label_color = batch["labels"][index].flatten(1).max(dim=1).values
        assert torch.allclose(prompt_color, label_color)  # the color to paint is the prompt's


def test_train_saves_a_loadable_checkpoint_and_reports_the_swap(tmp_path):
    lines = []
    best = train(TrainSettings(steps=3, batch=2, warmup=1, eval_every=3, eval_episodes=2), tmp_path / "w", log=lines.append)
    assert best["step"] == 3 and 0.0 <= best["miou"] <= 1.0 and 0.0 <= best["swapped_miou"] <= 1.0
    assert any("swapped-prompt mIoU" in line for line in lines)
    assert load_model(tmp_path / "w", device="cpu").config.hidden_size == 96


def test_fine_tuning_starts_from_given_weights_and_moves_them(tmp_path):
    start = load_model("tiny-appearance", device="cpu")
    settings = TrainSettings(steps=2, batch=2, warmup=1, eval_every=2, eval_episodes=2, init="tiny-appearance", lr=1e-3)
    train(settings, tmp_path / "w", log=lambda line: None)
    tuned = load_model(tmp_path / "w", device="cpu")
    deltas = [(a - b).abs().max().item() for a, b in zip(start.parameters(), tuned.parameters())]
    assert 0 < max(deltas) < 0.05  # moved by two small steps, not re-initialised


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown training task 'colors'"):
        TrainSettings(task="colors")
