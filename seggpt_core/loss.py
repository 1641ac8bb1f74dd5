"""The painting loss shared by training and prompt tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["balanced_loss"]


def balanced_loss(painted: torch.Tensor, labels: torch.Tensor, foreground: torch.Tensor,
                  distractor_pixels: torch.Tensor | None = None, distractor_weight: float = 0.0) -> torch.Tensor:
    """Smooth L1 (beta 0.01, the paper's) per pixel, with the foreground and the background of each sample
    weighted 1:1, so that painting everything black is not a cheap minimum.

    Args:
        painted, labels: (B, 3, h, w) normalized images.
        foreground: (B, h, w) bool, the pixels `labels` paints in a label color.
        distractor_pixels: (B, h, w) bool, other objects of a sample; with `distractor_weight` w they get w of its
            weight on their own and the foreground and the plain background (1 - w) / 2 each. w = 0 (the default)
            is the plain 1:1 weighting.
    """
    per_pixel = F.smooth_l1_loss(painted, labels, reduction="none", beta=0.01).mean(dim=1)
    fg = foreground.float()
    if distractor_pixels is None or distractor_weight <= 0:
        others = torch.zeros_like(fg)
    else:
        others = distractor_pixels.float() * (1 - fg)
    plain = 1 - fg - others

    def share(mask: torch.Tensor) -> torch.Tensor:
        return mask.mean(dim=(1, 2), keepdim=True).clamp(1e-3, 1 - 1e-3)

    has_others = (others.sum(dim=(1, 2), keepdim=True) > 0).float()
    side = (1 - distractor_weight) / 2
    weights = (side * fg / share(fg) + distractor_weight * has_others * others / share(others)
               + (side + distractor_weight * (1 - has_others)) * plain / share(plain))
    return (per_pixel * weights).mean()
