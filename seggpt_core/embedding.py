"""A cheap global image embedding for choosing prompts that look like a target.

Two parts, each L2-normalized, then joined and normalized again so that a dot product is a cosine similarity:
- a joint RGB color histogram (8 levels per channel, 512 bins; square roots of the shares, so the dot product is
  the Bhattacharyya coefficient): which colors the image holds, and under which light;
- a 16x16 thumbnail, each channel standardized (layout and contrast), at half weight.
No extra model: it costs well under a millisecond on a 448x448 image, and it is computed once per image.

Why a joint histogram: on pools whose prompts come under two global lights (bench/prompt_strategy.py, 200
held-out episodes, pools of 8), the previous embedding (the thumbnail and three separate 8-bin channel histograms)
chose a prompt under the target's light 66% of the time (62% of K=3), this one 96% (91%); `similar` then beats
`recent` by 0.069 mIoU at K=3 instead of 0.024. Objects keep their colors across the images of a project, and
only the joint histogram tells those colors apart from the random backgrounds'.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["image_embedding", "most_similar"]

_LEVELS = 8
_LAYOUT_WEIGHT = 0.5


def image_embedding(image: Image.Image) -> np.ndarray:
    rgb = image.convert("RGB")
    pixels = np.asarray(rgb.resize((64, 64), Image.BILINEAR)).reshape(-1, 3) // (256 // _LEVELS)
    bins = (pixels[:, 0].astype(np.intp) * _LEVELS + pixels[:, 1]) * _LEVELS + pixels[:, 2]
    histogram = np.sqrt(np.bincount(bins, minlength=_LEVELS**3).astype(np.float32) / len(bins))
    thumb = np.asarray(rgb.resize((16, 16), Image.BILINEAR), dtype=np.float32)
    layout = ((thumb - thumb.mean(axis=(0, 1))) / (thumb.std(axis=(0, 1)) + 1e-3)).ravel()
    layout /= np.linalg.norm(layout) + 1e-9
    vector = np.concatenate([histogram / (np.linalg.norm(histogram) + 1e-9), _LAYOUT_WEIGHT * layout])
    return vector / (np.linalg.norm(vector) + 1e-9)


def most_similar(target: np.ndarray, candidates: list[np.ndarray], indices: list[int], k: int) -> list[int]:
    """The `k` of `indices` whose embeddings are closest to `target` (ties: earlier index first)."""
    scored = sorted(indices, key=lambda i: (-float(candidates[i] @ target), i))
    return sorted(scored[:k])
