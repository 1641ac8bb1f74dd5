"""Measured quality: mIoU of in-context segmentation on synthetic episodes or an FSS-1000 style folder.

IoU is computed per target and label and averaged per class group (an appearance label's texture, a shape's
category); mIoU is the mean over groups. A prompt swap measures prompt reading directly: the same target,
prompted with another class's mask, must score far lower against its own class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from ..embedding import image_embedding
from ..model import SegGpt
from ..predictor import Prompt, SegGptPredictor
from ..prompt_tuning import TuneSettings, tune_prompt
from .appearance import apply_condition, make_appearance_episode, make_project
from .episodes import HELD_OUT_SEED, Episode, Scene
from ..ranking import spearman  # noqa: F401  (re-exported: evaluation reports it)
from .shapes import make_episode

__all__ = ["EvalReport", "TASKS", "iou", "spearman", "make_episodes", "evaluate_episodes", "evaluate_synthetic",
           "evaluate_folder", "evaluate_prompt_strategies", "evaluate_prompt_tuning", "HELD_OUT_SEED"]

from .tasks import TASKS


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    union = np.logical_or(predicted, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, truth).sum() / union)


@dataclass
class EvalReport:
    per_class: dict[str, list[float]] = field(default_factory=dict)
    scored: list[tuple[float, float]] = field(default_factory=list)  # (prediction score, IoU) where a score is known
    # With a prompt swap: the IoU with the target's own class when the prompt marked another class, per group,
    # and the (own label, shown label) pairs.
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
        """mIoU when every prompt marked another class: as high as `miou` for a model that ignores its prompt,
        far lower for one that reads it."""
        return float(np.mean([np.mean(v) for v in self.swapped.values()])) if self.swapped else 0.0

    @property
    def swap_ratio(self) -> float:
        """swapped_miou / miou (0 for perfect prompt reading, 1 for none)."""
        return self.swapped_miou / self.miou if self.miou > 0 else 1.0


def make_episodes(count: int, *, task: str = "appearance", shots: int = 1, targets: int = 1, labels: int = 1,
                  size: tuple[int, int] = (96, 96), first_seed: int = HELD_OUT_SEED, family: str = "train",
                  jitter: float = 8.0) -> Iterator[Episode]:
    """`count` seeded episodes of `task` ("appearance": `family` and `jitter` apply; "shapes")."""
    if task not in TASKS:
        raise ValueError(f"unknown episode task {task!r}; known: {', '.join(TASKS)}")
    for i in range(count):
        if task == "appearance":
            yield make_appearance_episode(first_seed + i, shots=shots, targets=targets, size=size, labels=labels,
                                          family=family, jitter=jitter)
        else:
            yield make_episode(first_seed + i, shots=shots, targets=targets, size=size, labels=labels)


def _score(predictor: SegGptPredictor, episode: Episode, report: EvalReport) -> None:
    categories = list(episode.categories)
    predictor.set_prompts([Prompt(s.image, {c: s.masks[c] for c in categories}) for s in episode.prompts])
    for target, result in zip(episode.targets, predictor.predict([t.image for t in episode.targets])):
        for category in categories:
            report.add(episode.group(category), iou(result.masks[category], target.masks[category]), result.scores[category])


def _swap_label(episode: Episode, own: str, fallback: Episode | None) -> tuple[str, list[Scene]]:
    """Another class to prompt with: one that every prompt image of the episode shows (the same images, another
    mask), or else the same label of a `fallback` episode of another class."""
    for other in sorted(episode.prompts[0].masks):
        if other != own and all(p.masks[other].any() for p in episode.prompts):
            return other, episode.prompts
    if fallback is None:
        raise ValueError(f"no other class to swap {own!r} with")
    shown = fallback.categories[0]
    return shown, fallback.prompts


def evaluate_episodes(predictor: SegGptPredictor, episodes: Iterable[Episode], prompt_swap: bool = False) -> EvalReport:
    """Score episodes (e.g. the ones an end-to-end run sent through Label Studio). With `prompt_swap` (one label
    per episode), each target is segmented again with another class's prompt and scored against its own class."""
    report = EvalReport()
    made = list(episodes) if prompt_swap else episodes
    for index, episode in enumerate(made):
        _score(predictor, episode, report)
        if not prompt_swap:
            continue
        if len(episode.categories) != 1:
            raise ValueError("a prompt swap needs one label per episode")
        own = episode.categories[0]
        fallback = next((e for e in made[index + 1 :] + made[:index] if episode.group(own) != e.group(e.categories[0])), None)
        shown, prompts = _swap_label(episode, own, fallback)
        predictor.set_prompts([Prompt(p.image, {shown: p.masks[shown]}) for p in prompts])
        for target, result in zip(episode.targets, predictor.predict([t.image for t in episode.targets])):
            report.swapped.setdefault(episode.group(own), []).append(iou(result.masks[shown], target.masks[own]))
            report.swaps.append((own, shown))
    return report


def evaluate_synthetic(predictor: SegGptPredictor, episodes: int, shots: int = 1, labels: int = 1,
                       size: tuple[int, int] = (96, 96), first_seed: int = HELD_OUT_SEED, prompt_swap: bool = False,
                       task: str = "appearance", family: str = "train", jitter: float = 8.0) -> EvalReport:
    """Held-out episodes of `task` (see `make_episodes`), optionally with the prompt swap."""
    made = make_episodes(episodes, task=task, shots=shots, labels=labels, size=size, first_seed=first_seed,
                         family=family, jitter=jitter)
    return evaluate_episodes(predictor, made, prompt_swap=prompt_swap)


def evaluate_folder(predictor: SegGptPredictor, directory: Path, shots: int = 1) -> EvalReport:
    """FSS-1000 layout: one folder per class holding `name.jpg` images and `name.png` masks. For each class the
    first `shots` images (sorted by name) are the prompts and every other image is a target."""
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
        _score(predictor, Episode((folder.name,), pairs[:shots], pairs[shots:]), report)
    return report


# A selection rule: (label -> indices of the prompts annotating it, K, strategy, prompt embeddings, target
# embedding) -> label -> chosen indices. The product's is `worker.selection.select`; it is passed in, because
# seggpt_core imports nothing of the layers above it.
Select = Callable[[Mapping[str, Sequence[int]], int, str, Sequence[np.ndarray], np.ndarray], Mapping[str, Sequence[int]]]


def _light(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A global light: per-channel gains in 0.55..1.0 and a tint of up to 50 levels per channel."""
    return rng.uniform(0.55, 1.0, size=3), rng.uniform(-50, 50, size=3)


def evaluate_prompt_strategies(predictor: SegGptPredictor, episodes: int, select: Select, pool: int = 8,
                               ks: Sequence[int] = (1, 3), first_seed: int = HELD_OUT_SEED + 700_000
                               ) -> tuple[dict[tuple[str, int], EvalReport], dict[tuple[str, int], float]]:
    """`similar` against `recent` prompt choice on pools that mix two lights.

    Each held-out appearance episode has `pool` candidate prompts of its label in an arbitrary "newest first"
    order; half are seen under one global light, half under another, and the target under the first: a project
    whose images come from two cameras or two times of day. Both strategies pick K from the same pool for the
    same target. Returns a report per (strategy, K), and per (strategy, K) the share of chosen prompts that were
    under the target's light."""
    size = predictor.size
    reports = {(strategy, k): EvalReport() for strategy in ("similar", "recent") for k in ks}
    same_light: dict[tuple[str, int], list[float]] = {key: [] for key in reports}
    for index in range(episodes):
        seed = first_seed + index
        episode = make_appearance_episode(seed, shots=pool, targets=1)
        rng = np.random.default_rng([seed, 5])
        lights = [_light(rng), _light(rng)]
        which = rng.permutation([i % 2 for i in range(pool)])
        images = [apply_condition(s.image, *lights[w]) for s, w in zip(episode.prompts, which)]
        label = episode.categories[0]
        predictor.set_prompts([Prompt(image, {label: s.masks[label]}) for image, s in zip(images, episode.prompts)])
        target = episode.targets[0]
        target_image = apply_condition(target.image, *lights[0])
        prepared = predictor.prepare_target(target_image)
        embeddings = [image_embedding(predictor.prompt_image(i)) for i in range(pool)]
        target_embedding = image_embedding(target_image.resize((size[1], size[0])))
        for (strategy, k), report in reports.items():
            selection = select(predictor.annotated_by(), k, strategy, embeddings, target_embedding)
            same_light[(strategy, k)].append(float(np.mean([which[i] == 0 for i in selection[label]])))
            result = predictor.predict_prepared([prepared], [selection])[0]
            report.add(episode.group(label), iou(result.masks[label], target.masks[label]))
    return reports, {key: float(np.mean(values)) for key, values in same_light.items()}


def evaluate_prompt_tuning(model: SegGpt, projects: int, examples: int = 16, targets: int = 40, steps: int = 150, k: int = 5,
                           jitter: float = 16.0, first_seed: int = HELD_OUT_SEED + 1_200_000,
                           log: Callable[[str], None] | None = None, lr: float | None = None) -> dict[str, EvalReport]:
    """Tuned prompt against one-shot (the first labeled scene), the scene tuning started from alone ("start"), and
    the K-shot ensemble, on
    the held-out scenes of synthetic projects (see `make_project`), SegGPT frozen. Returns a report per method,
    grouped by project."""
    predictor = SegGptPredictor(model)
    reports = {name: EvalReport() for name in ("one-shot", "start", f"{k}-shot", "tuned")}
    for index in range(projects):
        label, scenes = make_project(first_seed + 1000 * index, examples + targets, jitter=jitter)
        labeled = [Prompt(s.image, {label: s.masks[label]}) for s in scenes[:examples]]
        held_out = scenes[examples:]
        learned = tune_prompt(model, labeled, TuneSettings(steps=steps) if lr is None else TuneSettings(steps=steps, lr=lr))
        start = learned.info["initial_example"]  # the example tuning started from, alone: what the choice gives
        setups = {"one-shot": (labeled[:1], None), "start": (labeled[start : start + 1], None), f"{k}-shot": (labeled[:k], None),
                  "tuned": ([], learned)}
        group = f"project {index} ({label})"
        for name, (prompts, tuned) in setups.items():
            predictor.set_prompts(prompts, learned=tuned)
            for target, result in zip(held_out, predictor.predict([t.image for t in held_out])):
                reports[name].add(group, iou(result.masks[label], target.masks[label]))
        if log is not None:
            log(f"{group:26s} " + "  ".join(f"{name} {report.class_means[group]:.4f}" for name, report in reports.items()))
    return reports
