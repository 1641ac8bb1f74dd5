"""Which predicted regions an annotator sees: score thresholds (global, per control, per label) and a minimum area.

A region must clear every threshold that applies to it: `SEGGPT_SCORE_THRESHOLD`, its control's
`model_score_threshold` attribute (Label Studio's own convention) and its label's `SEGGPT_LABEL_THRESHOLDS` entry.
`SEGGPT_MIN_AREA` drops regions, and polygon components, smaller than that many pixels (or than that share of the
image, written `0.5%` or as a number below 1). All of them are part of the model version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np

__all__ = ["RegionFilter", "parse_label_thresholds", "parse_min_area"]


def parse_label_thresholds(text: str) -> dict[str, float]:
    """`"Cat=0.6, Dog=0.3"` -> {"Cat": 0.6, "Dog": 0.3}; a ValueError names the part it cannot read."""
    thresholds = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        label, sep, value = part.rpartition("=")
        try:
            if not sep or not label.strip():
                raise ValueError
            thresholds[label.strip()] = float(value)
        except ValueError:
            raise ValueError(f"SEGGPT_LABEL_THRESHOLDS: {part!r} is not <label>=<score>") from None
    return thresholds


def parse_min_area(text: str) -> tuple[float, float]:
    """`"200"` (pixels), `"0.5%"` or `"0.005"` (a share of the image) -> (pixels, share), one of them 0."""
    raw = text.strip()
    try:
        share = raw.endswith("%")
        value = float(raw[:-1]) / 100 if share else float(raw)
    except ValueError:
        raise ValueError(f"SEGGPT_MIN_AREA: {text!r} is not a number of pixels or a share of the image (e.g. 200 or 0.5%)") from None
    if value < 0 or (share and value > 1):
        raise ValueError(f"SEGGPT_MIN_AREA must be >= 0 pixels or a share in 0..100%, got {text!r}")
    return (0.0, value) if share or value < 1 else (value, 0.0)


@dataclass(frozen=True)
class RegionFilter:
    score_threshold: float = 0.0
    label_thresholds: Mapping[str, float] = field(default_factory=dict)
    min_area_pixels: float = 0.0
    min_area_share: float = 0.0  # of the image's pixels

    @property
    def min_area(self) -> bool:
        return bool(self.min_area_pixels or self.min_area_share)

    @property
    def active(self) -> bool:
        return bool(self.score_threshold or self.label_thresholds or self.min_area)

    def threshold(self, control_threshold: float | None, label: str) -> float:
        return max(self.score_threshold, control_threshold or 0.0, self.label_thresholds.get(label, 0.0))

    def min_pixels(self, image_pixels: int) -> float:
        return max(self.min_area_pixels, self.min_area_share * image_pixels)

    def drop_small_components(self, mask: np.ndarray) -> np.ndarray:
        """The mask without its connected components below the minimum area."""
        minimum = self.min_pixels(mask.size)
        if minimum <= 1 or not mask.any():
            return mask
        if self.min_area_share >= 1:
            return np.zeros_like(mask, dtype=bool)  # nothing is as large as the whole image and more

        count, labels, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, dtype=np.uint8), connectivity=8)
        keep = np.zeros(count, dtype=bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= minimum
        return keep[labels]

    def to_json(self) -> dict[str, Any]:
        return {"score_threshold": self.score_threshold, "label_thresholds": dict(sorted(self.label_thresholds.items())),
                "min_pixels": self.min_area_pixels, "min_area_share": self.min_area_share}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "RegionFilter":
        data = data or {}
        return cls(float(data.get("score_threshold", 0.0)), dict(data.get("label_thresholds") or {}),
                   float(data.get("min_pixels", 0.0)), float(data.get("min_area_share", 0.0)))
