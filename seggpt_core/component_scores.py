"""A score for each connected component of a label's painting, so that one region per instance carries its own.

The label's score is the soft IoU of its mask with the painted colors (see `SegGptPredictor._decode`). A
component's score is the same soft IoU over that component alone: its own pixels, and the fringe pixels (the
label's color second-nearest) within two model pixels of it. With one component it equals the label's score.
"""

from __future__ import annotations

import cv2
import numpy as np

from .upsampled_mask import nearest_source_indices

__all__ = ["ComponentScores"]

FRINGE_REACH = 2  # model pixels: how far from a component its fringe is counted


class ComponentScores:
    """Per-component scores of one label, from the model-sized decoding (nearest color index, its margin, and the
    runner-up index), for a mask upsampled to `size` (height, width)."""

    def __init__(self, indices: np.ndarray, confidence: np.ndarray, runner_up: np.ndarray, value: int, size: tuple[int, int]) -> None:
        self.indices, self.confidence, self.runner_up = indices, confidence, runner_up
        self.value = value
        self.size = (int(size[0]), int(size[1]))
        self.factor = 1.0  # what the label's score was multiplied by after decoding (the "agreement" score)
        self._map: np.ndarray | None = None

    def score_map(self) -> np.ndarray:
        """Model-sized: each pixel of a component holds that component's score, 0 elsewhere."""
        if self._map is not None:
            return self._map

        inside = self.indices == self.value
        count, labels = cv2.connectedComponents(inside.astype(np.uint8), connectivity=8)
        scores = np.zeros(self.indices.shape, dtype=np.float32)
        if count > 1:
            reach = 2 * FRINGE_REACH + 1
            near = cv2.dilate(labels.astype(np.uint16), np.ones((reach, reach), np.uint8)).astype(np.int64)
            fringe = (self.runner_up == self.value) & ~inside & (near > 0)
            confidence = self.confidence.astype(np.float64)
            own = np.bincount(labels[inside], minlength=count)
            margin_in = np.bincount(labels[inside], weights=confidence[inside], minlength=count)
            edge = np.bincount(near[fringe], minlength=count)
            margin_out = np.bincount(near[fringe], weights=confidence[fringe], minlength=count)
            with np.errstate(invalid="ignore", divide="ignore"):
                per = np.where(own > 0, (own + margin_in) / 2 / (own + (edge - margin_out) / 2), 0.0)
            per[0] = 0.0
            scores = per[labels].astype(np.float32)
        self._map = scores
        return scores

    def at(self, rows: np.ndarray, cols: np.ndarray) -> float:
        """The score of the component that full-size pixels (rows, cols) of one region fall in (the highest, if
        they span several model components); 0 where none of them is painted."""
        source_rows = nearest_source_indices(self.indices.shape[0], self.size[0])[np.asarray(rows)]
        source_cols = nearest_source_indices(self.indices.shape[1], self.size[1])[np.asarray(cols)]
        values = self.score_map()[source_rows, source_cols]
        return float(values.max()) * self.factor if values.size else 0.0
