"""Training mechanics of the small SegGPT (the quality itself is measured by `seggpt-ls eval`, not in tests)."""

from __future__ import annotations

import numpy as np
import torch

from seggpt_core import load_model
from seggpt_core.build import build_model
from seggpt_core.synthetic import CATEGORIES, make_scene
from seggpt_core.training import TrainSettings, balanced_loss, category_grid, make_batch, pretrain_categories, train


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
    # painting every shape still beats painting nothing while w stays below the foreground's share
    painting_nothing = balanced_loss(torch.zeros_like(labels), labels, foreground, others, 0.2)
    assert weighted < painting_nothing


def test_batches_pair_prompt_and_target_masks_of_one_color():
    batch = make_batch([3, 4], (64, 64))
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["foreground"].shape == (2, 64, 64)
    assert batch["foreground"].any(dim=(1, 2)).all()  # every target holds its category
    for index in range(2):
        prompt_color = batch["prompt_masks"][index].flatten(1).max(dim=1).values
        label_color = batch["labels"][index].flatten(1).max(dim=1).values
        assert torch.allclose(prompt_color, label_color)  # the color to paint is the prompt's
    assert not (batch["distractor_pixels"] & batch["foreground"]).any()
    crowded = make_batch([3, 4, 5, 6], (64, 64), distractors=5)
    assert crowded["distractor_pixels"].float().mean() > batch["distractor_pixels"].float().mean()


def test_shifted_copies_hold_the_prompt_scene_rolled_by_whole_patches():
    from seggpt_core.synthetic import shifted_copy_episode

    episode = shifted_copy_episode(11, 8)
    prompt, target = np.asarray(episode.prompts[0].image), np.asarray(episode.targets[0].image)
    shifts = [(dy, dx) for dy in range(0, 96, 8) for dx in range(0, 96, 8)
              if np.array_equal(np.roll(prompt, (dy, dx), axis=(0, 1)), target)]
    assert len(shifts) == 1 and shifts[0] != (0, 0)
    category = episode.categories[0]
    assert np.array_equal(np.roll(episode.prompts[0].masks[category], shifts[0], axis=(0, 1)), episode.targets[0].masks[category])
    batch = make_batch([11, 12], (48, 48), shifted=[True, False], episode_size=(96, 96), shift_step=8)
    assert batch["pixel_values"].shape == (2, 3, 48, 48) and batch["foreground"][0].any()


def test_the_curriculum_fades_shifted_copies_out():
    settings = TrainSettings(shifted_steps=10, fade_until=30)
    assert [settings.shifted_share(s) for s in (1, 10, 20, 30, 40)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert TrainSettings().shifted_share(1) == 0.0  # off by default: the shipped recipe


def test_train_with_the_shifted_copy_curriculum(tmp_path):
    settings = TrainSettings(steps=2, batch=2, warmup=1, eval_every=2, eval_episodes=2, shifted_steps=1, fade_until=2,
                             episode_size=(96, 96))
    best = train(settings, tmp_path / "w", log=lambda line: None)
    assert best["step"] == 2 and load_model(tmp_path / "w", device="cpu").config.patch_size == 4


def test_train_saves_a_loadable_checkpoint(tmp_path):
    best = train(TrainSettings(steps=3, batch=2, warmup=1, eval_every=3, eval_episodes=2), tmp_path / "w", log=lambda line: None)
    assert best["step"] == 3 and 0.0 <= best["miou"] <= 1.0
    model = load_model(tmp_path / "w", device="cpu")
    assert model.config.hidden_size == 96


def test_fine_tuning_starts_from_given_weights_and_moves_them(tmp_path):
    start = load_model("tiny-shapes", device="cpu")
    settings = TrainSettings(steps=2, batch=2, warmup=1, eval_every=2, eval_episodes=2, init="tiny-shapes",
                             distractors=4, distractor_weight=0.2, lr=1e-3)
    train(settings, tmp_path / "w", log=lambda line: None)
    tuned = load_model(tmp_path / "w", device="cpu")
    deltas = [(a - b).abs().max().item() for a, b in zip(start.parameters(), tuned.parameters())]
    assert 0 < max(deltas) < 0.05  # moved by two small steps, not re-initialised


def test_category_grid_labels_each_patch_with_its_shape():
    scene = make_scene(11, size=(48, 48), shapes=(2, 3))
    grid = category_grid(scene, 4)
    assert grid.shape == (12, 12)
    for index, category in enumerate(CATEGORIES, start=1):
        coverage = scene.masks[category].reshape(12, 4, 12, 4).mean(axis=(1, 3))
        assert ((coverage > 0.5) <= (grid.numpy() == index)).all()  # a patch mostly of one shape carries its label
    assert ((grid.numpy() == 0) == (np.logical_or.reduce(list(scene.masks.values())).reshape(12, 4, 12, 4).mean(axis=(1, 3)) <= 0.5)).mean() > 0.9


def test_category_pretraining_trains_the_encoder_only():
    model = build_model("shapes", seed=0).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lines = []
    pretrain_categories(model, TrainSettings(pretrain_steps=50, batch=2, warmup=5), log=lines.append)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("model.encoder.layers.5.") for name in moved)
    assert not any(name.startswith("decoder.") for name in moved)  # the painting head is not part of this stage
    assert lines and lines[-1].startswith("pretrain step 50 loss")


def test_train_runs_the_category_stage_first(tmp_path):
    lines = []
    train(TrainSettings(steps=2, batch=2, warmup=1, eval_every=2, eval_episodes=2, pretrain_steps=50), tmp_path / "w", log=lines.append)
    assert lines[0].startswith("pretrain step 50") and load_model(tmp_path / "w", device="cpu").config.patch_size == 4
