"""The multi-prompt feature ensemble and batching of several targets in one forward."""

from __future__ import annotations

import torch

from .oracle import random_inputs

EXACT = 1e-5


def _group(inputs: dict[str, torch.Tensor], target: int, prompts: list[int]) -> dict[str, torch.Tensor]:
    """K rows: target `target` paired with each prompt in `prompts`."""
    return {
        "pixel_values": inputs["pixel_values"][[target] * len(prompts)],
        "prompt_pixel_values": inputs["prompt_pixel_values"][prompts],
        "prompt_masks": inputs["prompt_masks"][prompts],
    }


def test_identical_prompts_give_the_single_prompt_output(tiny_model, tiny_pair):
    inputs = random_inputs(tiny_pair[2], batch=4)
    half = tiny_model.config.half_size[0]
    with torch.no_grad():
        single = tiny_model(**_group(inputs, 0, [1]))
        for k in (2, 3, 5):
            repeated = _group(inputs, 0, [1] * k)
            canvas = tiny_model(**repeated, num_prompts=k)
            target = tiny_model(**repeated, num_prompts=k, target_only=True)
            assert (canvas - single.expand_as(canvas)).abs().max().item() <= EXACT
            assert (target - single[:, :, half:]).abs().max().item() <= EXACT


def test_output_does_not_depend_on_prompt_order(tiny_model, tiny_pair):
    inputs = random_inputs(tiny_pair[2], batch=4)
    with torch.no_grad():
        forward = tiny_model(**_group(inputs, 0, [1, 2, 3]), num_prompts=3, target_only=True)
        backward = tiny_model(**_group(inputs, 0, [3, 1, 2]), num_prompts=3, target_only=True)
        single = tiny_model(**_group(inputs, 0, [1]), target_only=True)
    assert (forward - backward).abs().max().item() <= EXACT
    assert (forward - single).abs().max().item() > 1e-3  # the ensemble really mixes the prompts


def test_targets_batched_equal_separate_calls(tiny_model, tiny_pair):
    inputs = random_inputs(tiny_pair[2], batch=6)
    groups = [(0, [3, 4]), (1, [4, 5]), (2, [5, 3])]
    batched = {
        key: torch.cat([_group(inputs, t, p)[key] for t, p in groups]) for key in ("pixel_values", "prompt_pixel_values", "prompt_masks")
    }
    with torch.no_grad():
        together_canvas = tiny_model(**batched, num_prompts=2)
        together_target = tiny_model(**batched, num_prompts=2, target_only=True)
        for index, (target, prompts) in enumerate(groups):
            alone = _group(inputs, target, prompts)
            canvas = tiny_model(**alone, num_prompts=2)
            target_only = tiny_model(**alone, num_prompts=2, target_only=True)
            assert (together_canvas[2 * index : 2 * index + 2] - canvas).abs().max().item() <= EXACT
            assert (together_target[index : index + 1] - target_only).abs().max().item() <= EXACT


def test_target_half_is_shared_within_a_group(tiny_model, tiny_pair):
    """After the ensemble every row of a group paints the same target (but for the one context pixel row)."""
    inputs = random_inputs(tiny_pair[2], batch=3)
    half = tiny_model.config.half_size[0]
    with torch.no_grad():
        canvas = tiny_model(**_group(inputs, 0, [0, 1, 2]), num_prompts=3)
    bottom = canvas[:, :, half + 1 :]
    assert (bottom - bottom[:1]).abs().max().item() <= EXACT
    assert (canvas[0, :, :half] - canvas[1, :, :half]).abs().max().item() > 1e-3  # prompt halves stay per prompt


def _official_reference(reference, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """transformers' own layers driven with the official rule: blocks 0..merge_index average within each
    stream (transformers' `ensemble_cond=2`), later blocks over all rows. One target, K prompts."""
    config = reference.config
    model = reference.model
    image_canvas = torch.cat((inputs["prompt_pixel_values"], inputs["pixel_values"]), dim=2)
    mask_canvas = torch.cat((inputs["prompt_masks"], inputs["prompt_masks"]), dim=2)
    patches = model.embeddings.patch_embeddings.num_patches
    masked = torch.cat([torch.zeros(patches // 2, dtype=torch.bool), torch.ones(patches - patches // 2, dtype=torch.bool)])[None]
    hidden = model.embeddings(image_canvas, mask_canvas, bool_masked_pos=masked, embedding_type="instance")
    features = []
    for index, layer in enumerate(model.encoder.layers):
        hidden = layer(hidden, 2 if index <= config.merge_index else 1, True)[0]
        if index == config.merge_index:
            hidden = (hidden[: hidden.shape[0] // 2] + hidden[hidden.shape[0] // 2 :]) * 0.5
        if index in config.intermediate_hidden_state_indices:
            features.append(model.encoder.layernorm(hidden))
    return reference.decoder(torch.cat(features, dim=-1))


def test_ensemble_follows_the_official_rule_not_transformers_variant(tiny_pair, tiny_model):
    reference, _, config = tiny_pair
    inputs = _group(random_inputs(config, batch=4), 0, [1, 2, 3])
    with torch.no_grad():
        official = _official_reference(reference, inputs)
        transformers_variant = reference(**inputs, feature_ensemble=True).pred_masks
        ours = tiny_model(**inputs, num_prompts=3)
    assert (ours - official).abs().max().item() <= 1e-4
    # transformers mixes the two streams at the merge block: a real, visible difference
    assert (transformers_variant - official).abs().max().item() > 1e-3
