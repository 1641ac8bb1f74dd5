"""The one place that turns masks into Label Studio results and Label Studio annotations back into masks.

Brush regions: RLE of an RGBA buffer of the image's displayed size (EXIF applied), values 0/255, with
`brushlabels`. Polygon regions: one per connected component's outer contour, in percent of the image size.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .label_config import Control
from .region_filter import RegionFilter
from .ls_rle import mask_to_rle, rle_to_flat

__all__ = ["region_id", "brush_region", "brush_instance_regions", "polygon_regions", "prediction_for", "masks_from_annotation", "region_masks", "AnnotationError"]


class AnnotationError(ValueError):
    """An annotation region that cannot be turned into a mask (wrong size, unknown label, bad geometry)."""


def region_id(*parts: object) -> str:
    """A stable region id: the same task, control, label and index always give the same id."""
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:10]


def brush_region(mask: np.ndarray, control: Control, label: str, score: float, rid: str) -> dict:
    height, width = mask.shape
    return {
        "id": rid,
        "from_name": control.name,
        "to_name": control.to_name,
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
        "score": round(float(score), 4),
        "readonly": False,
    }


def _own_score(component_scores, rows, cols, label_score: float) -> float:
    """A region's own score (its model component's, see `seggpt_core.component_scores`), else the label's."""
    if component_scores is None:
        return label_score
    own = component_scores.at(rows, cols)
    return own if own > 0 else label_score


def polygon_regions(mask: np.ndarray, control: Control, label: str, score: float, rid_prefix: str, min_area: int = 4,
                    component_scores=None) -> list[dict]:
    """Outer contours of the mask's components, simplified to about one pixel, in percent coordinates. With
    `component_scores`, each polygon carries its own component's score."""
    height, width = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    regions = []
    for index, contour in enumerate(sorted(contours, key=cv2.contourArea, reverse=True)):
        if cv2.contourArea(contour) < min_area:
            continue
        points = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2)
        if len(points) < 3:
            continue
        edge = contour.reshape(-1, 2)  # a contour's pixels belong to its component
        own = _own_score(component_scores, edge[:, 1], edge[:, 0], score)
        regions.append({
            "id": f"{rid_prefix}{index}",
            "from_name": control.name,
            "to_name": control.to_name,
            "type": "polygonlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {
                "points": [[round(100.0 * (x + 0.5) / width, 3), round(100.0 * (y + 0.5) / height, 3)] for x, y in points.tolist()],
                "polygonlabels": [label],
                "closed": True,
            },
            "score": round(float(own), 4),
            "readonly": False,
        })
    return regions


def brush_instance_regions(mask: np.ndarray, control: Control, label: str, score: float, rid_prefix: str,
                           component_scores=None) -> list[dict]:
    """One brush region per connected component (an instance), largest first, each with its own score (the
    region filter's minimum area has been applied to `mask` before)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, dtype=np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    regions = []
    for index, component in enumerate(order):
        part = labels == component
        rows, cols = np.nonzero(part)
        regions.append(brush_region(part, control, label, _own_score(component_scores, rows, cols, score), f"{rid_prefix}{index}"))
    return regions


def prediction_for(
    task_id: object,
    controls: Sequence[Control],
    masks: Mapping[str, np.ndarray],
    scores: Mapping[str, float],
    model_version: str,
    region_filter: RegionFilter | None = None,
    component_scores: Mapping[str, object] | None = None,
    instances: bool = False,
) -> dict:
    """A Label Studio prediction: regions for every control's labels that are present and pass `region_filter`.

    `masks` and `scores` are keyed by `"<control>\\x1f<label>"` (see `label_key`). Polygons are one per component;
    with `instances`, brush regions are too. With `component_scores` (same keys), each such region carries its own
    component's score, and the per-label thresholds apply to it. The prediction score is the mean score of the
    regions it holds (of all labels when it holds none; 0 when the filter left out every region, so that sorting
    by score puts the task first for review).
    """
    result = []
    region_scores = []
    left_out = 0
    region_filter = region_filter or RegionFilter()
    for control in controls:
        for label in control.labels:
            key = label_key(control.name, label)
            mask = masks.get(key)
            if mask is None or not mask.any():
                continue
            own = (component_scores or {}).get(key)
            per_region = own is not None and (instances or control.kind != "brushlabels")
            if not per_region and scores[key] < region_filter.threshold(control.score_threshold, label):
                left_out += 1
                continue
            if region_filter.min_area:
                mask = region_filter.drop_small_components(np.asarray(mask))
                if not mask.any():
                    left_out += 1
                    continue
            rid = region_id(task_id, control.name, label)
            if control.kind == "brushlabels" and not instances:
                regions = [brush_region(mask, control, label, scores[key], rid)]
            elif control.kind == "brushlabels":
                regions = brush_instance_regions(mask, control, label, scores[key], rid, own)
            else:
                regions = polygon_regions(mask, control, label, scores[key], rid, component_scores=own)
            threshold = region_filter.threshold(control.score_threshold, label)
            kept = [r for r in regions if r["score"] >= threshold]
            left_out += bool(regions) and not kept
            result.extend(kept)
            region_scores.extend(r["score"] for r in kept)
    if not result:  # nothing found (a 1x1 image scored 0.97 from its empty masks): nothing to be confident about
        return {"result": [], "score": 0.0, "model_version": model_version}
    return {"result": result, "score": round(float(np.mean(region_scores)), 4), "model_version": model_version}


LABEL_KEY_SEPARATOR = "\x1f"
"""Between a control's name and a label in a label key: a character no name holds."""


def label_key(control: str, label: str) -> str:
    """One key per (control, label): two controls may share label names."""
    return f"{control}{LABEL_KEY_SEPARATOR}{label}"


def split_label_key(key: str) -> tuple[str, str]:
    control, label = key.split(LABEL_KEY_SEPARATOR, 1)
    return control, label


def region_masks(result: Iterable[dict], controls: Sequence[Control], size: tuple[int, int]) -> list[tuple[str, np.ndarray, dict]]:
    """(label key, mask, region) for each region of `result` that one of `controls` draws, for an image of `size`
    (height, width); a region with several labels comes once per label.

    Regions of other controls or types are ignored; a region whose geometry does not fit `size` raises
    AnnotationError.
    """
    height, width = size
    by_name = {c.name: c for c in controls}
    found = []
    for region in result or ():
        control = by_name.get(region.get("from_name"))
        if control is None or region.get("type") != control.kind:
            continue
        value = region.get("value") or {}
        labels = value.get(control.kind) or []
        unknown = [label for label in labels if label not in control.labels]
        if unknown:
            raise AnnotationError(f"region {region.get('id')}: labels {unknown} are not in control '{control.name}'")
        if control.kind == "brushlabels":
            rle = value.get("rle")
            if not rle:
                raise AnnotationError(f"region {region.get('id')}: brush region without rle")
            try:
                flat = rle_to_flat(rle)
            except ValueError as exc:
                raise AnnotationError(f"region {region.get('id')}: {exc}") from None
            if flat.size != height * width * 4:
                raise AnnotationError(
                    f"region {region.get('id')}: brush mask holds {flat.size // 4} pixels, the image {width}x{height} has {width * height}"
                )
            # a pixel is drawn when any of its 4 channels is: one 32-bit word per pixel (16 ms less than a max
            # over the channels on 1920x1080; `rle_to_flat` returns a fresh contiguous buffer)
            mask = flat.view(np.uint32).reshape(height, width) != 0
        else:
            points = value.get("points") or []
            if len(points) < 3:
                raise AnnotationError(f"region {region.get('id')}: polygon with {len(points)} points")
            canvas = Image.new("L", (width, height), 0)
            ImageDraw.Draw(canvas).polygon([(x * width / 100.0, y * height / 100.0) for x, y in points], fill=1, outline=1)
            mask = np.asarray(canvas, dtype=bool)
        found.extend((label_key(control.name, label), mask, region) for label in labels)
    return found


def masks_from_annotation(result: Iterable[dict], controls: Sequence[Control], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Masks keyed by `label_key` from an annotation's result, for an image of `size` (height, width).

    Regions of other controls or types are ignored; a region whose geometry does not fit `size` raises
    AnnotationError. Only labels that were drawn get a mask: an annotation teaches nothing about the others.
    """
    masks: dict[str, np.ndarray] = {}
    for key, mask, _ in region_masks(result, controls, size):
        masks[key] = masks[key] | mask if key in masks else mask
    return masks
