"""Appearance-class episodes: seeded, every image shows the label's class beside another, families kept apart."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_core.research.appearance import (
    HELDOUT_TEXTURES,
    TRAIN_TEXTURES,
    apply_condition,
    make_appearance_episode,
)
from seggpt_core.research.episodes import HELD_OUT_SEED


def test_episodes_are_deterministic():
    first, again = make_appearance_episode(HELD_OUT_SEED + 5, shots=2), make_appearance_episode(HELD_OUT_SEED + 5, shots=2)
    assert first.categories == again.categories
    for a, b in zip(first.prompts + first.targets, again.prompts + again.targets):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    other = make_appearance_episode(HELD_OUT_SEED + 6, shots=2)
    assert not np.array_equal(np.asarray(first.prompts[0].image), np.asarray(other.prompts[0].image))


@pytest.mark.parametrize("family", ["train", "heldout"])
def test_every_image_holds_the_label_and_another_class(family):
    for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + 30):
        episode = make_appearance_episode(seed, shots=2, targets=2, family=family)
        assert 3 <= len(episode.classes) <= 4 and len(episode.categories) == 1
        label = episode.categories[0]
        for scene in episode.prompts + episode.targets:
            assert scene.masks[label].mean() >= 0.02
            assert any(scene.masks[c].any() for c in episode.classes if c != label)
            # classes never overlap: a pixel is one class's or the background's
            assert np.sum([m.astype(int) for m in scene.masks.values()], axis=0).max() <= 1


def test_families_draw_disjoint_textures():
    assert not set(TRAIN_TEXTURES) & set(HELDOUT_TEXTURES)
    seen = {"train": set(), "heldout": set()}
    for family in seen:
        for seed in range(200):
            seen[family] |= {c.texture for c in make_appearance_episode(seed, family=family).classes.values()}
    assert seen["train"] == set(TRAIN_TEXTURES) and seen["heldout"] == set(HELDOUT_TEXTURES)


def test_paired_and_multi_label_episodes():
    paired = make_appearance_episode(7, paired=True)
    assert len(paired.categories) == 2
    for scene in paired.prompts + paired.targets:
        assert all(scene.masks[c].mean() >= 0.02 for c in paired.categories)
    multi = make_appearance_episode(HELD_OUT_SEED + 8, labels=2, shots=3)
    assert len(multi.categories) == 2 and len(multi.prompts) == 3
    with pytest.raises(ValueError, match="one must stay unlabeled"):
        make_appearance_episode(1, labels=4, classes=(4, 4))
    with pytest.raises(ValueError, match="unknown episode family"):
        make_appearance_episode(1, family="other")


def test_classes_are_reported_by_texture():
    episode = make_appearance_episode(HELD_OUT_SEED + 9)
    label = episode.categories[0]
    assert episode.group(label) == episode.classes[label].texture and label.startswith(episode.group(label))


def test_jitter_spreads_instance_brightness():
    def spread(jitter: float) -> float:
        values = []
        for seed in range(40):
            episode = make_appearance_episode(seed, jitter=jitter, targets=3)
            label = episode.categories[0]
            values.append(np.std([np.asarray(s.image)[s.masks[label]].mean() for s in episode.targets]))
        return float(np.mean(values))

    assert spread(30.0) > 2 * spread(2.0)


def test_conditions_change_the_light_not_the_scene():
    episode = make_appearance_episode(3)
    image = episode.prompts[0].image
    darker = np.asarray(apply_condition(image, np.array([0.6, 0.6, 0.6]), np.array([0, 0, 0])), dtype=float)
    assert darker.mean() < 0.7 * np.asarray(image, dtype=float).mean()
    tinted = np.asarray(apply_condition(image, np.ones(3), np.array([40, 0, -40])), dtype=int)
    assert tinted[..., 0].mean() > np.asarray(image)[..., 0].mean() and tinted.shape == np.asarray(image).shape
