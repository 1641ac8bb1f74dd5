"""Per-label score thresholds calibrated from review records, and the settings a project predicts with.

An edit is a region the reviewer deleted or added. A threshold t leaves out the predicted regions scoring below
t: a deleted region left out saves its deletion, a kept region left out costs an addition; what reviewers added
stays added. The calibrated threshold is the lowest that gives the fewest edits on the reviewed regions, once a
label has at least SEGGPT_CALIBRATION_MIN_REGIONS of them. With SEGGPT_AUTO_THRESHOLDS it is applied; an explicit
SEGGPT_LABEL_THRESHOLDS entry for the label wins.
"""

from __future__ import annotations

import logging
from typing import Sequence

import redis

from .region_filter import parse_label_thresholds
from .review_store import load_summary
from .settings import Settings

__all__ = ["edits_at", "calibrate", "project_settings"]

log = logging.getLogger(__name__)


def edits_at(regions: Sequence[Sequence[float]], added: int, threshold: float) -> int:
    """Edits the reviewers would have made with `threshold`: `regions` are [score, IoU, kept 0/1] of the predicted
    regions, `added` the regions they drew that no predicted region matched."""
    kept_out = sum(1 for score, _, kept in regions if kept and score < threshold)
    deleted_in = sum(1 for score, _, kept in regions if not kept and score >= threshold)
    return added + kept_out + deleted_in


def calibrate(regions: Sequence[Sequence[float]], added: int, min_regions: int) -> dict:
    """{"threshold": t or None (too few regions), "edits_at_zero", "edits", "saved", "regions"}."""
    at_zero = edits_at(regions, added, 0.0)
    if len(regions) < min_regions:
        return {"threshold": None, "edits_at_zero": at_zero, "edits": at_zero, "saved": 0, "regions": len(regions)}
    scores = sorted({float(r[0]) for r in regions})
    # one candidate per distinct way of cutting the sorted scores: 0 (keep all), between neighbours, above all
    candidates = [0.0] + [round((a + b) / 2, 5) for a, b in zip(scores, scores[1:])] + [round(scores[-1] + 1e-4, 5)]
    best = min(candidates, key=lambda t: (edits_at(regions, added, t), t))
    edits = edits_at(regions, added, best)
    return {"threshold": best, "edits_at_zero": at_zero, "edits": edits, "saved": at_zero - edits, "regions": len(regions)}


def project_settings(connection: redis.Redis, settings: Settings, project: int) -> Settings:
    """`settings` for predicting `project`: with SEGGPT_AUTO_THRESHOLDS, the calibrated per-label thresholds join
    SEGGPT_LABEL_THRESHOLDS (whose own entries win), so they are part of the model version like any threshold."""
    if not settings.auto_thresholds:
        return settings

    try:
        summary = load_summary(connection, project) or {}
    except redis.RedisError as exc:
        log.warning("project %s: calibrated thresholds unreadable, predicting without them: %s", project, exc)
        return settings
    calibrated = {label: numbers["threshold"] for label, numbers in (summary.get("labels") or {}).items()
                  if numbers.get("threshold") and not any(c in label for c in ",=")}
    if not calibrated:
        return settings
    merged = {**calibrated, **parse_label_thresholds(settings.label_thresholds)}
    return settings.with_(label_thresholds=",".join(f"{label}={value}" for label, value in sorted(merged.items())))
