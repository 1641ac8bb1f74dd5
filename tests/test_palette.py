"""Palette colors and nearest-color decoding, through the same normalization the model sees."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_core import decode_colors, make_palette
from seggpt_core.transforms import denormalize, label_map_to_tensor


@pytest.mark.parametrize("num_labels", range(1, 21))
def test_palette_round_trip(num_labels):
    palette = make_palette(num_labels)
    assert palette.shape == (num_labels + 1, 3)
    assert palette[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in palette.tolist()}) == num_labels + 1  # all distinct, none black but row 0
    rng = np.random.default_rng(num_labels)
    label_map = rng.integers(0, num_labels + 1, size=(37, 53)).astype(np.uint8)
    label_map[0, : num_labels + 1] = np.arange(num_labels + 1)  # every label present
    colored = label_map_to_tensor(label_map, palette, (37, 53))
    rgb = denormalize(colored[None])[0]
    decoded, confidence = decode_colors(rgb, palette)
    assert np.array_equal(decoded, label_map)
    assert confidence.min() > 0.99


def test_single_label_is_white_like_the_official_demos():
    assert make_palette(1)[1].tolist() == [255, 255, 255]


def test_confidence_falls_between_colors():
    palette = make_palette(1)
    pixels = np.array([[[0, 0, 0], [128, 128, 128], [250, 250, 250], [60, 60, 60]]], dtype=np.float32)
    indices, confidence = decode_colors(pixels, palette)
    assert indices.tolist() == [[0, 1, 1, 0]]
    assert confidence[0, 0] == pytest.approx(1.0)
    assert confidence[0, 1] < 0.01  # halfway: no confidence
    assert confidence[0, 3] < confidence[0, 0] and confidence[0, 2] > 0.9


def test_runner_up_is_the_second_nearest_color():
    palette = make_palette(5)
    rgb = np.random.default_rng(5).uniform(0, 255, size=(9, 11, 3)).astype(np.float32)
    indices, confidence, runner_up = decode_colors(rgb, palette, with_runner_up=True)
    order = np.argsort(((rgb[..., None, :] - palette.astype(np.float32)) ** 2).sum(-1), axis=-1)
    assert np.array_equal(indices, order[..., 0]) and np.array_equal(runner_up, order[..., 1])
    assert np.array_equal(decode_colors(rgb, palette)[1], confidence)  # the same answer without it


def test_runner_up_with_two_colors_is_the_other_one():
    palette = make_palette(1)
    rgb = np.random.default_rng(6).uniform(0, 255, size=(5, 7, 3)).astype(np.float32)
    indices, _, runner_up = decode_colors(rgb, palette, with_runner_up=True)
    assert np.array_equal(runner_up, 1 - indices)


@pytest.mark.parametrize("num_labels", [1, 3, 7, 20])
def test_lookup_matches_exact_decoding_but_at_near_ties(num_labels):
    from seggpt_core.palette import lookup_colors

    palette = make_palette(num_labels)
    rng = np.random.default_rng(num_labels)
    # painted-like pixels: palette colors plus noise, and uniform ones
    noisy = palette[rng.integers(0, num_labels + 1, 4000)].astype(np.float32) + rng.normal(0, 40, (4000, 3))
    rgb = np.clip(np.concatenate([noisy, rng.uniform(0, 255, (4000, 3))]), 0, 255).astype(np.float32).reshape(80, 100, 3)
    exact = decode_colors(rgb, palette, with_runner_up=True)
    looked_up = lookup_colors(rgb, palette)
    distances = np.sqrt(((rgb[..., None, :] - palette.astype(np.float32)) ** 2).sum(-1))
    ordered = np.sort(distances, axis=-1)
    clear = ordered[..., 1] - ordered[..., 0] > 2 * 3.51  # rounding moves a color by at most 3.51 (sqrt(3) * 255/126)
    assert clear.mean() > 0.75  # the test is not vacuous
    assert np.array_equal(looked_up[0][clear], exact[0][clear])
    moved = np.abs(looked_up[1] - exact[1])
    assert moved.max() < 0.1 and moved.mean() < 0.02, (moved.max(), moved.mean())
    assert (looked_up[0] == exact[0]).mean() > 0.99


def test_lookup_is_exact_on_black_and_white():
    from seggpt_core.palette import lookup_colors

    rgb = np.array([[[0, 0, 0], [255, 255, 255], [np.nan, 300, -5]]], np.float32)
    indices, confidence, runner_up = lookup_colors(rgb, make_palette(1))
    assert indices.tolist() == [[0, 1, 0]] and runner_up.tolist() == [[1, 0, 1]]
    assert confidence[0, :2].tolist() == [1.0, 1.0]  # and out-of-range or NaN values are clamped, never an error
