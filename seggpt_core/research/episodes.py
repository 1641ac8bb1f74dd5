"""What every synthetic episode is made of, whichever generator drew it: scenes with one mask per class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["HELD_OUT_SEED", "Scene", "Episode"]

# Training draws episode seeds below this; evaluation above it, so held-out episodes are never seen.
HELD_OUT_SEED = 10_000_000


@dataclass
class Scene:
    image: Image.Image
    masks: dict[str, np.ndarray]  # class -> (height, width) bool; every class of the scene has a (maybe empty) mask


@dataclass
class Episode:
    """K annotated prompts and the targets to segment, for one class (semantic) or several (multi-label)."""

    categories: tuple[str, ...]
    prompts: list[Scene]
    targets: list[Scene]

    def group(self, label: str) -> str:
        """The name results for `label` are reported under (the label itself, unless a generator knows better)."""
        return label
