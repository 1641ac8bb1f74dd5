"""Named SegGPT variants and the one builder that wires a config into a network."""

from __future__ import annotations

import torch
from torch import nn

from .config import SegGptConfig
from .errors import WeightsError
from .model import SegGpt

__all__ = ["VARIANTS", "build_model", "variant_config"]

# Variants are data: a name maps to the hyperparameters that differ from ViT-L.
_TINY = {
    "hidden_size": 96,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "image_size": (128, 64),
    "patch_size": 8,
    "pretrain_image_size": 64,
    "decoder_hidden_size": 32,
    "merge_index": 1,
    "intermediate_hidden_state_indices": (1, 3, 5),
}
VARIANTS: dict[str, dict] = {
    "vit-large": {},
    # Small enough to run in milliseconds on a CPU: tests and demos with random weights.
    "tiny": _TINY,
    # The project's trained models (`tiny-appearance`, and `tiny-shapes` before it): tiny's depth and width on a
    # 48x48 half with 4-pixel patches. Measured side by side for 8 minutes on one core: patch 4 at 48 px reached
    # shape-episode mIoU 0.18 where patch 8 at 64 px reached 0.16; 8-pixel patches are as large as the thin parts
    # of the shapes it must tell apart.
    "shapes": {**_TINY, "image_size": (96, 48), "patch_size": 4, "pretrain_image_size": 48},
}


def variant_config(name: str) -> SegGptConfig:
    try:
        return SegGptConfig(**VARIANTS[name])
    except KeyError:
        raise WeightsError(f"unknown SegGPT variant {name!r}; known: {', '.join(VARIANTS)}") from None


def _init_weights(model: SegGpt, std: float) -> None:
    # The same scheme as the reference implementations: truncated normal for projections, small normal tokens.
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        if name.endswith(("rel_pos_h", "rel_pos_w", "position_embeddings")):
            nn.init.trunc_normal_(param, std=std)
        elif name.endswith("_token"):
            nn.init.normal_(param, std=std)


def build_model(config: SegGptConfig | str, *, seed: int | None = None, init: bool = True) -> SegGpt:
    """A SegGPT network for `config` (or a variant name), randomly initialised unless `init` is False.

    With `init=False` the parameters are left as allocated; use it under `torch.device("meta")` before loading
    a checkpoint with `assign=True`.
    """
    if isinstance(config, str):
        config = variant_config(config)
    model = SegGpt(config)
    if init:
        generator_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            _init_weights(model, std=0.02)
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    return model.eval()
