"""The reference oracle: transformers' SegGPT at small configs, and random inputs for it."""

from __future__ import annotations

import torch

# Small configs that exercise different paths: position-embedding interpolation or not, merge index 0 or later,
# no qkv bias, a non-default MLP width, non-square grids.
SMALL_CONFIGS = {
    "interp": dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=[64, 32], patch_size=8,
        pretrain_image_size=32, decoder_hidden_size=16, merge_index=1, intermediate_hidden_state_indices=[1, 3],
    ),
    "no_interp_merge0": dict(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=3, image_size=[96, 48], patch_size=16,
        pretrain_image_size=48, decoder_hidden_size=8, merge_index=0, intermediate_hidden_state_indices=[0, 2],
        qkv_bias=False, mlp_dim=80,
    ),
    "wide": dict(
        hidden_size=32, num_hidden_layers=5, num_attention_heads=2, image_size=[48, 80], patch_size=8,
        pretrain_image_size=64, decoder_hidden_size=16, merge_index=2, intermediate_hidden_state_indices=[2, 3, 4],
    ),
}


def hf_model(config_kwargs: dict, seed: int = 0):
    from transformers import SegGptConfig, SegGptForImageSegmentation

    torch.manual_seed(seed)
    return SegGptForImageSegmentation(SegGptConfig(**config_kwargs)).eval()


def random_inputs(config_kwargs: dict, batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    height, width = config_kwargs["image_size"]
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, height // 2, width)
    return {
        "pixel_values": torch.randn(shape, generator=generator),
        "prompt_pixel_values": torch.randn(shape, generator=generator),
        "prompt_masks": torch.randn(shape, generator=generator),
    }
