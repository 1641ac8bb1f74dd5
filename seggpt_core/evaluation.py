"""Measured quality: mIoU of in-context segmentation on synthetic episodes or an FSS-1000 style folder.

IoU is computed per target and category, averaged per category; mIoU is the mean over categories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .predictor import Prompt, SegGptPredictor
from .synthetic import Episode, Scene, make_episode

__all__ = ["EvalReport", "iou", "spearman", "evaluate_episodes", "evaluate_synthetic", "evaluate_folder", "HELD_OUT_SEED"]

# Training draws episode seeds below this; evaluation above it, so held-out episodes are never seen.
HELD_OUT_SEED = 10_000_000


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(predicted, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, truth).sum() / union)


@dataclass
class EvalReport:
    per_class: dict[str, list[float]] = field(default_factory=dict)
    scored: list[tuple[float, float]] = field(default_factory=list)  # (prediction score, IoU) where a score is known
    # With a prompt swap: the IoU with the target's category when the prompt showed another category, per target
    # category, and the (target category, prompt category) pairs.
    swapped: dict[str, list[float]] = field(default_factory=dict)
    swaps: list[tuple[str, str]] = field(default_factory=list)

    def add(self, category: str, value: float, score: float | None = None) -> None:
        self.per_class.setdefault(category, []).append(value)
        if score is not None:
            self.scored.append((score, value))

    @property
    def score_iou_spearman(self) -> float:
        """How well prediction scores rank the masks by quality (1.0: perfectly)."""
        return spearman([s for s, _ in self.scored], [v for _, v in self.scored]) if len(self.scored) > 1 else 0.0

    @property
    def class_means(self) -> dict[str, float]:
        return {c: float(np.mean(v)) for c, v in sorted(self.per_class.items())}

    @property
    def miou(self) -> float:
        means = self.class_means
        return float(np.mean(list(means.values()))) if means else 0.0

    @property
    def swapped_miou(self) -> float:
        """mIoU when every prompt showed another category: as high as `miou` for a model that ignores its prompt,
        far lower for one that reads it."""
        return float(np.mean([np.mean(v) for v in self.swapped.values()])) if self.swapped else 0.0


def _score(predictor: SegGptPredictor, prompts: Sequence[Scene], targets: Sequence[Scene], categories: Iterable[str], report: EvalReport) -> None:
    categories = list(categories)
    predictor.set_prompts([Prompt(s.image, {c: s.masks[c] for c in categories}) for s in prompts])
    for target, result in zip(targets, predictor.predict([t.image for t in targets])):
        for category in categories:
            report.add(category, iou(result.masks[category], target.masks[category]), result.scores[category])


def evaluate_episodes(predictor: SegGptPredictor, episodes: Iterable[Episode]) -> EvalReport:
    """Score given episodes (e.g. the ones an end-to-end run sent through Label Studio)."""
    report = EvalReport()
    for episode in episodes:
        _score(predictor, episode.prompts, episode.targets, episode.categories, report)
    return report


def evaluate_synthetic(predictor: SegGptPredictor, episodes: int, shots: int = 1, labels: int = 1,
                       size: tuple[int, int] = (96, 96), first_seed: int = HELD_OUT_SEED, prompt_swap: bool = False) -> EvalReport:
    """Held-out episodes. With `prompt_swap` (one label only), each target is also segmented with the prompts of
    the next episode of another category, and scored against its own category (`swapped_miou`)."""
    if not prompt_swap:
        generated = (make_episode(first_seed + i, shots=shots, targets=1, size=size, labels=labels) for i in range(episodes))
        return evaluate_episodes(predictor, generated)
    if labels != 1:
        raise ValueError("a prompt swap needs one label per episode")
    made = [make_episode(first_seed + i, shots=shots, targets=1, size=size) for i in range(episodes)]
    report = evaluate_episodes(predictor, made)
    for index, episode in enumerate(made):
        own = episode.categories[0]
        other = next((e for e in made[index + 1 :] + made[:index] if e.categories[0] != own), None)
        if other is None:
            raise ValueError(f"a prompt swap needs episodes of at least two categories; all {episodes} show {own!r}")
        shown = other.categories[0]
        predictor.set_prompts([Prompt(p.image, {shown: p.masks[shown]}) for p in other.prompts])
        for target, result in zip(episode.targets, predictor.predict([t.image for t in episode.targets])):
            report.swapped.setdefault(own, []).append(iou(result.masks[shown], target.masks[own]))
            report.swaps.append((own, shown))
    return report


def evaluate_folder(predictor: SegGptPredictor, directory: Path, shots: int = 1) -> EvalReport:
    """FSS-1000 layout: one folder per class holding `name.jpg` images and `name.png` masks. For each class the
    first `shots` images (sorted by name) are the prompts and every other image is a target."""
    from PIL import Image

    report = EvalReport()
    for folder in sorted(p for p in Path(directory).iterdir() if p.is_dir()):
        pairs = []
        for image_path in sorted(folder.glob("*.jpg")):
            mask_path = image_path.with_suffix(".png")
            if mask_path.exists():
                with Image.open(image_path) as image, Image.open(mask_path) as mask:
                    pairs.append(Scene(image.convert("RGB"), {folder.name: np.asarray(mask.convert("L")) > 127}))
        if len(pairs) <= shots:
            raise ValueError(f"{folder}: needs more than {shots} image/mask pairs, found {len(pairs)}")
        _score(predictor, pairs[:shots], pairs[shots:], [folder.name], report)
    return report


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (ties get their mean rank); 0.0 when either side is constant."""
    def ranks(values: Sequence[float]) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        order = np.argsort(values, kind="mergesort")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values))
        for value in np.unique(values):
            tied = values == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])

