"""COCO run-length encoding of binary masks (the compressed `counts` string pycocotools reads).

Written here rather than depending on pycocotools at run time: it is 30 lines, and pycocotools ships compiled
code for a job this small. The tests read our output back with pycocotools.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode", "bbox"]


def _runs(mask: np.ndarray) -> list[int]:
    """Alternating run lengths over the column-major pixels, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if not flat[0] else [0] + runs


def encode(mask: np.ndarray) -> dict:
    """{"size": [height, width], "counts": str} for a (height, width) boolean mask."""
    runs = _runs(mask)
    chars = []
    for index, value in enumerate(runs):
        value = int(value)
        if index > 2:
            value -= int(runs[index - 2])  # later counts are stored as differences (the COCO scheme)
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = not ((value == 0 and not chunk & 0x10) or (value == -1 and chunk & 0x10))
            if more:
                chunk |= 0x20
            chars.append(chr(chunk + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def bbox(mask: np.ndarray) -> list[float]:
    """[x, y, width, height] of the mask's bounding box (zeros for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
