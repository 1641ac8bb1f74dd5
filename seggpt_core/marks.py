"""Marked instances in the target itself: the annotator marks one instance (a point, a box or a drawn mask) in the image
they are labeling, and the other instances of that label in the same image come back.

Two passes. The first finds the marked instance: the component of the label's prediction (from the other
prompts) under each positive point or inside each box. Where there is no other prompt for the label, or the
prediction has nothing there, the instance is taken from the image alone: inside the box, or a window around
the point, the pixels whose smoothed color is nearer the mark's center than the window's border. The second
pass prompts with the target and that marked instance mask (plus a few of the other prompts), so the model paints the
look-alikes. Components holding a negative point are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

__all__ = ["Mark", "MarkError", "marked_instances", "appearance_region", "segment_from_marks"]

POOL_PROMPTS = 2  # other prompts that join the marked instance in the second pass (the marked instance keeps most weight)


class MarkError(ValueError):
    """A mark that cannot be used (unknown kind, coordinates outside the image, a mask of the wrong size)."""


@dataclass(frozen=True)
class Mark:
    """One mark on the target, for `label`: a point (x, y) or a box (x0, y0, x1, y1) as fractions of the image's
    width and height, or a boolean mask of the image's size. Negative points say "not this"."""

    label: str
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    positive: bool = True

    def __post_init__(self) -> None:
        given = [self.point is not None, self.box is not None, self.mask is not None]
        if sum(given) != 1:
            raise MarkError(f"mark for {self.label!r}: give exactly one of a point, a box or a mask")
        values = self.point or self.box or ()
        if any(not (-0.01 <= float(v) <= 1.01) for v in values):
            raise MarkError(f"mark for {self.label!r}: coordinates {values} are not fractions of the image (0..1)")
        if self.box is not None and not (self.box[2] > self.box[0] and self.box[3] > self.box[1]):
            raise MarkError(f"mark for {self.label!r}: box {self.box} has no area")
        if not self.positive and self.point is None:
            raise MarkError(f"mark for {self.label!r}: only points can be negative")


def _pixel(mark_xy: Sequence[float], size: tuple[int, int]) -> tuple[int, int]:
    height, width = size
    return min(height - 1, max(0, int(mark_xy[1] * height))), min(width - 1, max(0, int(mark_xy[0] * width)))


def _box_pixels(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    height, width = size
    x0, y0 = max(0, int(np.floor(box[0] * width))), max(0, int(np.floor(box[1] * height)))
    x1, y1 = min(width, max(x0 + 1, int(np.ceil(box[2] * width)))), min(height, max(y0 + 1, int(np.ceil(box[3] * height))))
    return x0, y0, x1, y1


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    return cv2.connectedComponents(np.asarray(mask, dtype=np.uint8), connectivity=8)


def appearance_region(image: np.ndarray, mark: Mark) -> np.ndarray:
    """The instance under a point or inside a box from the image alone: within the box (or a window of a quarter
    of the image's shorter side around the point), the component at the center of the pixels whose smoothed
    color is nearer the center's than the border's. Smoothing over about a twelfth of the window lets striped or
    checkered instances read as one color."""
    height, width = image.shape[:2]
    if mark.box is not None:
        x0, y0, x1, y1 = _box_pixels(mark.box, (height, width))
        cy, cx = (y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2
    else:
        cy, cx = _pixel(mark.point, (height, width))
        half = max(4, min(height, width) // 8)
        x0, y0, x1, y1 = max(0, cx - half), max(0, cy - half), min(width, cx + half + 1), min(height, cy + half + 1)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1, :3]).astype(np.float32)
    h, w = crop.shape[:2]
    kernel = max(1, min(h, w) // 12) | 1
    smooth = cv2.blur(crop, (kernel, kernel)) if kernel > 1 else crop
    ly, lx = cy - y0, cx - x0
    r = max(1, min(h, w) // 10)
    center = np.median(smooth[max(0, ly - r) : ly + r + 1, max(0, lx - r) : lx + r + 1].reshape(-1, 3), axis=0)
    ring = np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]])
    border = np.median(ring, axis=0)
    inside = np.linalg.norm(smooth - center, axis=2) < np.linalg.norm(smooth - border, axis=2)
    region = np.zeros((height, width), dtype=bool)
    if np.linalg.norm(center - border) < 8 or not inside[ly, lx]:
        # nothing tells the instance from its surroundings: the ellipse the box (or window) encloses
        yy, xx = np.mgrid[0:h, 0:w]
        inside = ((yy - (h - 1) / 2) / max(h / 2, 1)) ** 2 + ((xx - (w - 1) / 2) / max(w / 2, 1)) ** 2 <= 1
        region[y0:y1, x0:x1] = inside
        return region
    _, labels = _components(inside)
    region[y0:y1, x0:x1] = labels == labels[ly, lx]
    return region


def _under_mark(predicted: np.ndarray, mark: Mark) -> np.ndarray:
    """The components of `predicted` a positive point falls in (or touches within a few pixels), or that lie
    mostly inside a box (clipped to it)."""
    size = predicted.shape
    count, labels = _components(predicted)
    if count <= 1:
        return np.zeros(size, dtype=bool)
    if mark.point is not None:
        y, x = _pixel(mark.point, size)
        r = max(1, min(size) // 50)
        window = labels[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
        hit = labels[y, x] or (np.bincount(window[window > 0]).argmax() if (window > 0).any() else 0)
        return labels == hit if hit else np.zeros(size, dtype=bool)
    x0, y0, x1, y1 = _box_pixels(mark.box, size)
    areas = np.bincount(labels.ravel(), minlength=count)
    inside = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=count)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = inside[1:] >= 0.5 * areas[1:]
    region = keep[labels]
    clip = np.zeros(size, dtype=bool)
    clip[y0:y1, x0:x1] = True
    return region & clip


def marked_instances(image: np.ndarray, marks: Sequence[Mark], first_pass: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """label -> the marked instance(s) of that label, at the image's size. `first_pass`: label -> the label's
    mask predicted from other prompts, where there are any."""
    size = image.shape[:2]
    first_pass = first_pass or {}
    masks: dict[str, np.ndarray] = {}
    for mark in marks:
        if not mark.positive:
            continue
        if mark.mask is not None:
            if mark.mask.shape != size:
                raise MarkError(f"mark for {mark.label!r}: mask is {mark.mask.shape}, the image is {size}")
            region = np.asarray(mark.mask, dtype=bool)
        else:
            predicted = first_pass.get(mark.label)
            region = _under_mark(np.asarray(predicted, dtype=bool), mark) if predicted is not None else None
            if region is None or not region.any():
                region = appearance_region(image, mark)
        masks[mark.label] = masks[mark.label] | region if mark.label in masks else region
    for mark in marks:
        if not mark.positive and mark.label in masks:
            masks[mark.label] = _drop_at(masks[mark.label], mark)
    return {label: mask for label, mask in masks.items() if mask.any()}


def _drop_at(mask: np.ndarray, mark: Mark) -> np.ndarray:
    """`mask` without the component a negative point falls in."""
    y, x = _pixel(mark.point, mask.shape)
    if not mask[y, x]:
        return mask
    _, labels = _components(mask)
    return mask & (labels != labels[y, x])


def segment_from_marks(predictor: Any, image: Any, marks: Sequence[Mark], pool_prompts: int = POOL_PROMPTS):
    """Segment the labels the positive `marks` name in `image`, with the marked instances as an extra prompt.

    `predictor`: a `SegGptPredictor`, with the other prompts set (or none: `prompts_for` answers [] then). Returns
    a `Segmentation` holding only the marked labels (the marked instances always included)."""
    # torch: marks are read by the web process, which never imports it (see backend/__init__.py)
    from .predictor import Prompt, Segmentation
    from .transforms import open_image

    rgb = open_image(image, max_pixels=predictor.max_pixels, where="target").convert("RGB")
    array = np.asarray(rgb)
    size = array.shape[:2]
    labels = sorted({h.label for h in marks if h.positive})
    target = predictor.prepare_target(rgb)
    known = {label: predictor.annotated_by().get(label, ()) for label in labels}
    first_pass: dict[str, np.ndarray] = {}
    with_prompts = {label: indices for label, indices in known.items() if indices}
    if with_prompts:
        found = predictor.predict_prepared([target], [with_prompts])[0]
        first_pass = {label: np.asarray(found.masks[label]) for label in with_prompts}
    instances = marked_instances(array, marks, first_pass)
    result = Segmentation({}, {}, size)
    for label, instance in instances.items():
        prompts = [Prompt(rgb, {label: instance})] + predictor.prompts_for(label)[:pool_prompts]
        painted = predictor.sibling(prompts).predict_prepared([target])[0]
        mask = np.asarray(painted.masks[label]) | instance
        for mark in marks:
            if not mark.positive and mark.label == label:
                mask = _drop_at(mask, mark)
        result.masks[label] = mask
        result.scores[label] = painted.scores[label]
        if label in painted.component_scores:
            result.component_scores[label] = painted.component_scores[label]
    return result
