"""In-context coloring training of a small SegGPT on synthetic shape episodes (the paper's recipe, scaled down).

Each sample is one episode: a prompt image with its category painted in a random color, and a target image whose
same-category region the model must paint in that color. The target half of the mask stream is hidden (mask
tokens), the loss is smooth L1 (beta 0.01) on the painted target half, with foreground and background pixels
weighted equally so that painting everything black is not a cheap minimum.

An optional first stage (`pretrain_steps`, off by default): per-patch shape-category classification through the
same forward, the mask stream all hidden, with a linear head that is thrown away afterwards. In-context training
alone never taught the network to tell the categories apart in a CPU budget (it learns to paint every shape);
the category loss on its own does (docs/benchmarks.md).

An optional curriculum (off by default, and off for the shipped `tiny-shapes`): for `shifted_steps` steps every
episode is a shifted copy (the target is the prompt's scene rolled by whole patches), then their share falls
linearly to none at `fade_until`. Shifted copies make the network match content across the canvas within 250
steps, which ordinary episodes never did; in the one run so far that skill faded as ordinary episodes came in
(docs/benchmarks.md has the numbers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .build import build_model
from .evaluation import HELD_OUT_SEED, evaluate_synthetic
from .model import SegGpt
from .predictor import SegGptPredictor
from .synthetic import CATEGORIES, EPISODE_SIZES, Scene, make_episode, make_scene, shifted_copy_episode
from .transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, resize_label_map
from .weights import load_model, save_model

__all__ = ["TrainSettings", "train"]


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 5000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.05
    seed: int = 0
    eval_every: int = 500
    eval_episodes: int = 100
    variant: str = "shapes"
    shifted_steps: int = 0  # every episode a shifted copy until this step ...
    fade_until: int = 0  # ... then a falling share of them, none from this step on
    episode_size: tuple[int, int] | None = None  # generated at this size, then resized (default: the model's)
    distractors: int = 2  # up to this many other shapes in each episode image
    distractor_weight: float = 0.0  # the other shapes' own share of the loss (0: they are plain background)
    init: str | None = None  # weights to start from (fine-tuning) instead of random ones
    pretrain_steps: int = 0  # steps of per-patch category classification before the in-context steps

    def shifted_share(self, step: int) -> float:
        if step <= self.shifted_steps:
            return 1.0
        return max(0.0, 1.0 - (step - self.shifted_steps) / max(1, self.fade_until - self.shifted_steps))


def _resized(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize_label_map(mask.astype(np.uint8), size) > 0


def _colored(mask: np.ndarray, color: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    height, width = size
    small = _resized(mask, size)
    rgb = np.zeros((height, width, 3), np.float32)
    rgb[small] = color / 255.0
    normalized = (rgb - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(normalized.transpose(2, 0, 1).copy()), torch.from_numpy(small)


def make_batch(seeds: list[int], size: tuple[int, int], shifted: list[bool] | None = None,
               episode_size: tuple[int, int] | None = None, shift_step: int = 8, distractors: int = 2) -> dict[str, torch.Tensor]:
    """Tensors for one batch of 1-shot semantic episodes, each painted in its own random saturated color; where
    `shifted` says so, a shifted copy (rolled by multiples of `shift_step` generated pixels) instead. Episodes
    are generated at `episode_size` (default `size`) and resized to `size`, with up to `distractors` other shapes.
    `distractor_pixels` marks the target's shapes of other categories (what reading the prompt must leave out)."""
    episode_size = episode_size or size
    targets, prompts, prompt_masks, labels, foreground, others = [], [], [], [], [], []
    for index, seed in enumerate(seeds):
        if shifted is not None and shifted[index]:
            episode = shifted_copy_episode(seed, shift_step, size=episode_size)
        else:
            episode = make_episode(seed, shots=1, targets=1, size=episode_size, distractors=distractors)
        category = episode.categories[0]
        rng = np.random.default_rng(seed + 1)
        color = rng.integers(0, 256, size=3).astype(np.float32)
        color[rng.integers(0, 3)] = 255.0  # keep it well away from the black background
        prompt, target = episode.prompts[0], episode.targets[0]
        prompts.append(image_to_tensor(prompt.image, size))
        targets.append(image_to_tensor(target.image, size))
        prompt_masks.append(_colored(prompt.masks[category], color, size)[0])
        label, fg = _colored(target.masks[category], color, size)
        labels.append(label)
        foreground.append(fg)
        other = np.logical_or.reduce([m for c, m in target.masks.items() if c != category])
        others.append(torch.from_numpy(_resized(other, size)) & ~fg)
    return {
        "pixel_values": torch.stack(targets),
        "prompt_pixel_values": torch.stack(prompts),
        "prompt_masks": torch.stack(prompt_masks),
        "labels": torch.stack(labels),
        "foreground": torch.stack(foreground),
        "distractor_pixels": torch.stack(others),
    }


def _warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine decay to zero at `steps`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def category_grid(scene: Scene, patch: int) -> torch.Tensor:
    """(rows, cols) int64: each patch's most common label, 0 for background and i + 1 for CATEGORIES[i]."""
    planes = np.stack([~np.logical_or.reduce([scene.masks[c] for c in CATEGORIES])] + [scene.masks[c] for c in CATEGORIES])
    shares = F.avg_pool2d(torch.from_numpy(planes.astype(np.float32))[None], patch)[0]
    return shares.argmax(dim=0)


def pretrain_categories(model: SegGpt, settings: TrainSettings, log: Callable[[str], None] = print) -> None:
    """Stage 1: train the encoder to label every patch of two stacked scenes with its shape category (the mask
    stream hidden, so only the images speak), through a linear head used only here."""
    config = model.config
    size, patch = config.half_size, config.patch_size
    head = torch.nn.Sequential(torch.nn.LayerNorm(config.hidden_size), torch.nn.Linear(config.hidden_size, len(CATEGORIES) + 1))
    parameters = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = _warmup_cosine(optimizer, settings.warmup, settings.pretrain_steps)
    hidden_mask = torch.ones(1, config.grid[0] * config.grid[1], dtype=torch.bool)
    rng = np.random.default_rng(settings.seed + 1)
    accuracy: list[float] = []
    for step in range(1, settings.pretrain_steps + 1):
        seeds = rng.integers(0, HELD_OUT_SEED, size=2 * settings.batch).tolist()
        scenes = [make_scene(seed, size=size, shapes=(2, 1 + settings.distractors), sizes=EPISODE_SIZES) for seed in seeds]
        images = torch.stack([image_to_tensor(scene.image, size) for scene in scenes])
        labels = torch.stack([category_grid(scene, patch) for scene in scenes])
        canvas = torch.cat((images[: settings.batch], images[settings.batch :]), dim=2)
        labels = torch.cat((labels[: settings.batch], labels[settings.batch :]), dim=1)
        hidden = model.model.embeddings(canvas, torch.zeros_like(canvas), hidden_mask, "instance")
        # the encoder's own forward (streams merged where the model merges them); its last feature is the deepest
        deepest = model.model.encoder(hidden, 1)[..., -config.hidden_size :]
        logits = head(deepest)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        shapes = labels > 0
        accuracy.append((logits.argmax(-1)[shapes] == labels[shapes]).float().mean().item())
        if step % 50 == 0:
            log(f"pretrain step {step} loss {loss.item():.4f} shape-patch accuracy (last 50) {np.mean(accuracy[-50:]):.3f}")


def balanced_loss(painted: torch.Tensor, labels: torch.Tensor, foreground: torch.Tensor,
                  distractor_pixels: torch.Tensor | None = None, distractor_weight: float = 0.0) -> torch.Tensor:
    """Smooth L1 (beta 0.01) per pixel, with the foreground and the background of each sample weighted 1:1.

    With `distractor_weight` w, the other shapes of a sample (`distractor_pixels`) get w of its weight on their own
    and the foreground and the plain background (1 - w) / 2 each. Otherwise a painted distractor costs only its
    small share of the background, which made "paint every shape" a deep minimum. Measured (docs/benchmarks.md):
    from scratch, w = 1/3 and even w = 0.2 collapse to painting nothing; as a fine-tune (`init`) w = 0.2 trains."""
    per_pixel = F.smooth_l1_loss(painted, labels, reduction="none", beta=0.01).mean(dim=1)
    fg = foreground.float()
    if distractor_pixels is None or distractor_weight <= 0:
        others = torch.zeros_like(fg)  # w = 0: one background, half the weight, as in the shipped recipe
    else:
        others = distractor_pixels.float() * (1 - fg)
    plain = 1 - fg - others

    def share(mask: torch.Tensor) -> torch.Tensor:
        return mask.mean(dim=(1, 2), keepdim=True).clamp(1e-3, 1 - 1e-3)

    has_others = (others.sum(dim=(1, 2), keepdim=True) > 0).float()
    side = (1 - distractor_weight) / 2
    weights = (side * fg / share(fg) + distractor_weight * has_others * others / share(others)
               + (side + distractor_weight * (1 - has_others)) * plain / share(plain))
    return (per_pixel * weights).mean()


def train(settings: TrainSettings, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Train from scratch (or from `settings.init`); saves the best checkpoint (by held-out 1-shot mIoU) under
    `out_dir`."""
    torch.manual_seed(settings.seed)
    if settings.init:
        model: SegGpt = load_model(settings.init, device="cpu").float().train()
        model.requires_grad_(True)
    else:
        model = build_model(settings.variant, seed=settings.seed).train()
    if settings.pretrain_steps:
        pretrain_categories(model, settings, log)
    size = model.config.half_size
    episode_size = settings.episode_size or size
    shift_step = model.config.patch_size * episode_size[0] // size[0]  # one patch, in generated pixels
    curriculum = settings.shifted_steps > 0 or settings.fade_until > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    scheduler = _warmup_cosine(optimizer, settings.warmup, settings.steps)
    best = {"miou": -1.0, "step": 0}
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    for step in range(1, settings.steps + 1):
        seeds = rng.integers(0, HELD_OUT_SEED, size=settings.batch).tolist()
        # drawn only with the curriculum on, so that the default recipe's random stream stays the shipped one's
        shifted = (rng.random(settings.batch) < settings.shifted_share(step)).tolist() if curriculum else None
        batch = make_batch(seeds, size, shifted, episode_size, shift_step, settings.distractors)
        painted = model(batch["pixel_values"], batch["prompt_pixel_values"], batch["prompt_masks"], target_only=True)
        loss = balanced_loss(painted, batch["labels"], batch["foreground"], batch["distractor_pixels"], settings.distractor_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.2e} {time.perf_counter() - started:.0f} s")
        if step % settings.eval_every == 0 or step == settings.steps:
            model.eval()
            # The checkpoint is chosen on held-out seeds apart from the ones `seggpt-ls eval` reports on.
            report = evaluate_synthetic(SegGptPredictor(model), settings.eval_episodes, first_seed=HELD_OUT_SEED + 500_000)
            model.train()
            log(f"step {step} held-out 1-shot mIoU {report.miou:.4f}")
            if report.miou > best["miou"]:
                best = {"miou": report.miou, "step": step}
                save_model(model.eval(), out_dir)
                model.train()
    best["seconds"] = round(time.perf_counter() - started, 1)
    return best
