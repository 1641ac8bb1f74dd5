"""Training mechanics of the small SegGPT (the quality itself is measured by `seggpt-ls eval`, not in tests)."""

from __future__ import annotations

import torch

from seggpt_core import load_model
from seggpt_core.training import TrainSettings, balanced_loss, make_batch, train


def test_balanced_loss_gives_foreground_and_background_equal_weight():
    labels = torch.zeros(1, 3, 10, 10)
    foreground = torch.zeros(1, 10, 10, dtype=torch.bool)
    foreground[0, :1] = True  # 10% foreground
    labels[:, :, :1] = 2.0
    all_background = torch.zeros_like(labels)
    all_foreground = torch.full_like(labels, 2.0)
    assert torch.isclose(balanced_loss(all_background, labels, foreground), balanced_loss(all_foreground, labels, foreground))
    assert balanced_loss(labels, labels, foreground).item() == 0.0


def test_batches_pair_prompt_and_target_masks_of_one_color():
    batch = make_batch([3, 4], (64, 64))
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["foreground"].shape == (2, 64, 64)
    assert batch["foreground"].any(dim=(1, 2)).all()  # every target holds its category
    for index in range(2):
        prompt_color = batch["prompt_masks"][index].flatten(1).max(dim=1).values
        label_color = batch["labels"][index].flatten(1).max(dim=1).values
        assert torch.allclose(prompt_color, label_color)  # the color to paint is the prompt's


def test_train_saves_a_loadable_checkpoint(tmp_path):
    best = train(TrainSettings(steps=3, batch=2, warmup=1, eval_every=3, eval_episodes=2), tmp_path / "w", log=lambda line: None)
    assert best["step"] == 3 and 0.0 <= best["miou"] <= 1.0
    model = load_model(tmp_path / "w", device="cpu")
    assert model.config.hidden_size == 96
