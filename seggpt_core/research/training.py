"""In-context coloring training of a small SegGPT on synthetic episodes (the paper's recipe, scaled down).

The default task is appearance-class episodes with paired labels: every (prompt image, target image) pair is in
the batch twice, once with each of two classes that both images show as the label. The images of the two rows
are identical and only the prompt's mask differs, so a network that ignores the mask can do no better than
chance between them: figure/ground earns nothing and the prompt is the only source of the answer. On shape
episodes (`task="shapes"`, how `tiny-shapes` was trained) "paint every shape" earned most of the reward and four
sessions of recipes never made the network read its prompt (docs/benchmarks.md).

Labels are painted in white, the color a label gets when it is painted alone (`labels_per_forward=1`), which
makes the loss fall several times faster than a random color per episode (in-context-training notes). The target
half of the mask stream is hidden (mask tokens); the loss is `balanced_loss` on the painted target half.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..build import build_model
from ..config import LABELS_PER_FORWARD_KEY
from ..loss import balanced_loss
from ..model import SegGpt
from ..palette import make_palette
from ..predictor import SegGptPredictor
from ..transforms import image_to_tensor, label_map_to_tensor, resize_label_map
from ..weights import load_model, save_model
from .appearance import make_appearance_episode
from .episodes import HELD_OUT_SEED
from .evaluation import TASKS, evaluate_synthetic
from .shapes import make_episode

__all__ = ["TrainSettings", "train", "make_batch", "CHECKPOINT_SEED"]

# The checkpoint is chosen on held-out seeds apart from the ones `seggpt-ls eval` reports on.
CHECKPOINT_SEED = HELD_OUT_SEED + 500_000


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 3600
    batch: int = 16  # image pairs per step (appearance: two rows each, one per label)
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.05
    seed: int = 0
    eval_every: int = 500
    eval_episodes: int = 60
    variant: str = "shapes"
    task: str = "appearance"
    episode_size: tuple[int, int] = (96, 96)  # generated at this size, then resized to the model's
    init: str | None = None  # weights to start from (fine-tuning) instead of random ones
    # Multi-prompt episodes: each step also trains `ensemble_batch` pairs of `ensemble_shots` prompts each through
    # the feature ensemble, with instances that vary more, so that averaging the prompts' features pays off
    # (0: one-shot only, how the shipped model was first trained).
    ensemble_shots: int = 0
    ensemble_batch: int = 4
    ensemble_jitter: tuple[float, float] = (8.0, 32.0)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown training task {self.task!r}; known: {', '.join(TASKS)}")
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps and batch must be positive, got {self.steps} and {self.batch}")
        if self.ensemble_shots and (self.ensemble_shots < 2 or self.task != "appearance" or self.ensemble_batch < 1):
            raise ValueError(f"ensemble_shots={self.ensemble_shots} needs at least 2 shots, a positive ensemble_batch "
                             f"and the appearance task (got task {self.task!r})")


_WHITE = make_palette(1)[1].astype(np.float32)


def _painted(mask: np.ndarray, size: tuple[int, int], color: np.ndarray = _WHITE) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, h, w) normalized canvas of `mask` painted in `color` on black, and the (h, w) bool mask, at `size`."""
    label_map = mask.astype(np.uint8)
    colors = np.stack([np.zeros(3), color]).astype(np.float32)
    return label_map_to_tensor(label_map, colors, size), torch.from_numpy(resize_label_map(label_map, size) > 0)


def make_batch(seeds: list[int], size: tuple[int, int], task: str = "appearance",
               episode_size: tuple[int, int] = (96, 96), shots: int = 1,
               jitter: tuple[float, float] = (4.0, 16.0)) -> dict[str, torch.Tensor]:
    """Tensors for one batch of episodes, one per seed, at the model's half `size`.

    appearance: two groups per seed, the same images with each of the episode's two paired labels; a group is
    `shots` consecutive rows (prompt k, the target), as the feature ensemble takes them, with one label row.
    shapes: one row per seed, the category painted in a random saturated color (how `tiny-shapes` was trained).
    """
    targets, prompts, prompt_masks, labels, foreground = [], [], [], [], []

    def add(prompt_images, target_image, prompt_mask_list, target_mask, color=_WHITE):
        target_tensor = image_to_tensor(target_image, size)
        for prompt_image, prompt_mask in zip(prompt_images, prompt_mask_list):
            prompts.append(image_to_tensor(prompt_image, size))
            targets.append(target_tensor)
            prompt_masks.append(_painted(prompt_mask, size, color)[0])
        label, fg = _painted(target_mask, size, color)
        labels.append(label)
        foreground.append(fg)

    for seed in seeds:
        if task == "appearance":
            # instances that vary from mild to strong, so that the model meets spreads it must generalize over
            spread = float(np.random.default_rng([seed, 3]).uniform(*jitter))
            episode = make_appearance_episode(seed, shots=shots, size=episode_size, paired=True, jitter=spread)
            target = episode.targets[0]
            for label in episode.categories:
                add([p.image for p in episode.prompts], target.image, [p.masks[label] for p in episode.prompts],
                    target.masks[label])
        else:
            episode = make_episode(seed, shots=1, targets=1, size=episode_size)
            category = episode.categories[0]
            rng = np.random.default_rng(seed + 1)
            color = rng.integers(0, 256, size=3).astype(np.float32)
            color[rng.integers(0, 3)] = 255.0  # keep it well away from the black background
            prompt, target = episode.prompts[0], episode.targets[0]
            add([prompt.image], target.image, [prompt.masks[category]], target.masks[category], color)
    return {
        "pixel_values": torch.stack(targets),
        "prompt_pixel_values": torch.stack(prompts),
        "prompt_masks": torch.stack(prompt_masks),
        "labels": torch.stack(labels),
        "foreground": torch.stack(foreground),
    }


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine decay to zero at `steps`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# The instance spread at which multi-prompt checkpoints are judged: beyond one-shot training's range, where one
# prompt no longer shows how the instances vary.
VARIED_JITTER = 24.0


@dataclass
class CheckpointReport:
    miou: float  # 1-shot, standard episodes
    swapped_miou: float
    varied_one_shot: float | None = None  # at VARIED_JITTER, with multi-prompt training only
    varied_five_shot: float | None = None

    @property
    def merit(self) -> float:
        """What checkpoints are chosen by: the 1-shot mIoU, averaged with the varied 5-shot one when the
        ensemble is trained too (so that neither is bought with the other)."""
        return self.miou if self.varied_five_shot is None else (self.miou + self.varied_five_shot) / 2


def checkpoint_report(model: SegGpt, settings: TrainSettings) -> CheckpointReport:
    """Held-out 1-shot quality with the prompt swap, painted one label at a time as inference does; with
    multi-prompt training also 1-shot and 5-shot on varied instances."""
    predictor = SegGptPredictor(model, labels_per_forward=1)
    n, seed = settings.eval_episodes, CHECKPOINT_SEED
    one = evaluate_synthetic(predictor, n, first_seed=seed, prompt_swap=True, task=settings.task)
    report = CheckpointReport(one.miou, one.swapped_miou)
    if settings.ensemble_shots:
        report.varied_one_shot = evaluate_synthetic(predictor, n, first_seed=seed, jitter=VARIED_JITTER).miou
        report.varied_five_shot = evaluate_synthetic(predictor, n, shots=5, first_seed=seed, jitter=VARIED_JITTER).miou
    return report


def train(settings: TrainSettings, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Train from scratch (or from `settings.init`); saves the best checkpoint (by held-out 1-shot mIoU with the
    model's own prompt) under `out_dir`, and returns its step, mIoU, swapped-prompt mIoU and the seconds taken."""
    torch.manual_seed(settings.seed)
    if settings.init:
        model: SegGpt = load_model(settings.init, device="cpu").float().train()
        model.requires_grad_(True)
    else:
        model = build_model(settings.variant, seed=settings.seed).train()
    # trained on one color: inference paints one label per forward (item 8 of issue 14 measured two in one)
    model.config.extra[LABELS_PER_FORWARD_KEY] = 1
    size = model.config.half_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = warmup_cosine(optimizer, settings.warmup, settings.steps)
    best: dict = {"merit": -1.0, "miou": -1.0, "swapped_miou": None, "step": 0}
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    for step in range(1, settings.steps + 1):
        seeds = rng.integers(0, HELD_OUT_SEED, size=settings.batch).tolist()
        batch = make_batch(seeds, size, settings.task, settings.episode_size)
        painted = model(batch["pixel_values"], batch["prompt_pixel_values"], batch["prompt_masks"], target_only=True)
        loss = balanced_loss(painted, batch["labels"], batch["foreground"])
        if settings.ensemble_shots:
            seeds = rng.integers(0, HELD_OUT_SEED, size=settings.ensemble_batch).tolist()
            group = make_batch(seeds, size, settings.task, settings.episode_size, settings.ensemble_shots,
                               settings.ensemble_jitter)
            painted = model(group["pixel_values"], group["prompt_pixel_values"], group["prompt_masks"],
                            num_prompts=settings.ensemble_shots, target_only=True)
            loss = loss + balanced_loss(painted, group["labels"], group["foreground"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.2e} {time.perf_counter() - started:.0f} s")
        if step % settings.eval_every == 0 or step == settings.steps:
            model.eval()
            report = checkpoint_report(model, settings)
            model.train()
            varied = "" if report.varied_five_shot is None else (
                f" varied (jitter {VARIED_JITTER:g}) 1-shot {report.varied_one_shot:.4f} 5-shot {report.varied_five_shot:.4f}")
            log(f"step {step} held-out 1-shot mIoU {report.miou:.4f} swapped-prompt mIoU {report.swapped_miou:.4f}{varied}")
            if report.merit > best["merit"]:
                best = {"merit": report.merit, "miou": report.miou, "swapped_miou": report.swapped_miou, "step": step,
                        "varied_one_shot": report.varied_one_shot, "varied_five_shot": report.varied_five_shot}
                save_model(model.eval(), out_dir)
                model.train()
    best["seconds"] = round(time.perf_counter() - started, 1)
    return best
