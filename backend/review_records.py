"""Review records: what an annotator made of our prediction, per label and per region (pure: no Redis, no HTTP).

A record compares a task's newest annotation with the prediction it was made from (`parent_prediction`, set by
the labeling page when an annotator starts from a prediction) or else with our newest prediction created before
the annotation (what the annotator saw). Regions are Label Studio's result items; a predicted region is kept
when it matches an annotated region of its label at IoU >= 0.5 (one to one, best pairs first), deleted when it
matches none; an annotated region that matches no predicted one was added.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .label_config import Control
from .ls_format import region_masks, split_label_key

__all__ = ["MATCH_IOU", "OUR_PREFIX", "compare_results", "made_from", "review_record"]

MATCH_IOU = 0.5
OUR_PREFIX = "seggpt-"  # every model version this backend writes starts with it


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def _size(*results: Sequence[dict]) -> tuple[int, int] | None:
    for result in results:
        for region in result or ():
            if region.get("original_height") and region.get("original_width"):
                return int(region["original_height"]), int(region["original_width"])
    return None


def _match(predicted: list[np.ndarray], annotated: list[np.ndarray]) -> tuple[list[float], list[bool], int]:
    """(best IoU of each predicted region, whether it is kept, annotated regions left unmatched): pairs at
    IoU >= MATCH_IOU, one to one, taken best first."""
    table = np.array([[_iou(p, a) for a in annotated] for p in predicted]).reshape(len(predicted), len(annotated))
    best = [float(row.max()) if row.size else 0.0 for row in table]
    kept = [False] * len(predicted)
    used = [False] * len(annotated)
    pairs = sorted(((table[i, j], i, j) for i in range(len(predicted)) for j in range(len(annotated))), reverse=True)
    for value, i, j in pairs:
        if value < MATCH_IOU:
            break
        if not kept[i] and not used[j]:
            kept[i] = used[j] = True
    return best, kept, used.count(False)


def compare_results(predicted: Sequence[dict], annotated: Sequence[dict], controls: Sequence[Control]) -> dict[str, dict]:
    """label -> {iou, kept, deleted, added, regions: [[score, best IoU, kept 0/1], ...]} for every label of
    `controls` that either result draws. The label's IoU is that of the union masks."""
    size = _size(annotated, predicted)
    if size is None:
        return {}
    ours, theirs = region_masks(predicted, controls, size), region_masks(annotated, controls, size)
    labels: dict[str, dict] = {}
    keys = sorted({k for k, _, _ in ours} | {k for k, _, _ in theirs})
    for key in keys:
        label = split_label_key(key)[1]
        mine = [(m, r) for k, m, r in ours if k == key]
        truth = [m for k, m, _ in theirs if k == key]
        union_mine = np.logical_or.reduce([m for m, _ in mine]) if mine else np.zeros(size, bool)
        union_truth = np.logical_or.reduce(truth) if truth else np.zeros(size, bool)
        best, kept, added = _match([m for m, _ in mine], truth)
        entry = labels.setdefault(label, {"iou": 0.0, "kept": 0, "deleted": 0, "added": 0, "regions": [], "_masks": []})
        entry["_masks"].append((union_mine, union_truth))
        entry["kept"] += sum(kept)
        entry["deleted"] += len(kept) - sum(kept)
        entry["added"] += added
        entry["regions"].extend([round(float(r.get("score") or 0.0), 4), round(b, 4), int(k)] for (_, r), b, k in zip(mine, best, kept))
    for entry in labels.values():
        # a label two controls draw: its masks of both, side by side
        pairs = entry.pop("_masks")
        entry["iou"] = round(_iou(np.concatenate([p for p, _ in pairs]), np.concatenate([t for _, t in pairs])), 6)
    return labels


def made_from(annotation: Mapping, predictions: Sequence[Mapping]) -> Mapping | None:
    """The prediction of ours the annotation was made from: its `parent_prediction` when that is ours, else our
    newest prediction created before the annotation; None when it was made from scratch (or from another model)."""
    parent = annotation.get("parent_prediction")
    if parent is not None:
        found = next((p for p in predictions if p.get("id") == parent), None)
        return found if found is not None and str(found.get("model_version") or "").startswith(OUR_PREFIX) else None
    made = annotation.get("created_at") or ""
    ours = [p for p in predictions if str(p.get("model_version") or "").startswith(OUR_PREFIX) and (p.get("created_at") or "") <= made]
    return max(ours, key=lambda p: (p.get("created_at") or "", p.get("id") or 0)) if ours else None


def review_record(task_id: int, annotation: Mapping, predictions: Sequence[Mapping], controls: Sequence[Control],
                  prompts_used: Mapping[str, Sequence] | None = None) -> dict:
    """The review record of `annotation` (the task's newest): small, JSON. Raises `ls_format.AnnotationError` for
    regions that do not fit their image."""
    record = {"task": int(task_id), "annotation": annotation.get("id"), "lead_time": annotation.get("lead_time"),
              "updated_at": annotation.get("updated_at") or annotation.get("created_at") or ""}
    prediction = made_from(annotation, predictions)
    if prediction is None:
        return {**record, "from_prediction": False}
    labels = compare_results(prediction.get("result") or [], annotation.get("result") or [], controls)
    accepted = all(v["deleted"] == 0 and v["added"] == 0 and v["iou"] >= 1.0 for v in labels.values())
    names = {split_label_key(k)[1]: list(v) for k, v in (prompts_used or {}).items()}
    return {**record, "from_prediction": True, "prediction": prediction.get("id"), "model_version": prediction.get("model_version"),
            "parent": annotation.get("parent_prediction") is not None, "accepted": accepted, "labels": labels,
            "prompts": {label: names[label] for label in sorted(names) if label in labels}}

