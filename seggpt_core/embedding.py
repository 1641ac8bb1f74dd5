"""A cheap global image embedding for choosing prompts that look like a target.

A 16x16 thumbnail (each channel standardized: layout and contrast) and a 3 x 8-bin color histogram (palette),
L2-normalized so that a dot product is a cosine similarity. No extra model: it costs well under a millisecond
on a 448x448 image, and it is computed once per image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["image_embedding", "most_similar"]


def image_embedding(image: Image.Image) -> np.ndarray:
    rgb = image.convert("RGB")
    thumb = np.asarray(rgb.resize((16, 16), Image.BILINEAR), dtype=np.float32)
    layout = (thumb - thumb.mean(axis=(0, 1))) / (thumb.std(axis=(0, 1)) + 1e-3)
    pixels = np.asarray(rgb.resize((64, 64), Image.BILINEAR)).reshape(-1, 3)
    histogram = np.concatenate([np.bincount(pixels[:, c] // 32, minlength=8) for c in range(3)]).astype(np.float32)
    histogram /= histogram.sum() + 1e-6
    vector = np.concatenate([layout.ravel() / np.sqrt(layout.size), 4.0 * histogram])
    return vector / (np.linalg.norm(vector) + 1e-9)


def most_similar(target: np.ndarray, candidates: list[np.ndarray], indices: list[int], k: int) -> list[int]:
    """The `k` of `indices` whose embeddings are closest to `target` (ties: earlier index first)."""
    scored = sorted(indices, key=lambda i: (-float(candidates[i] @ target), i))
    return sorted(scored[:k])
