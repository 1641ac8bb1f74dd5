"""Learnable prompt tuning: SegGPT stays frozen and one prompt (image plus mask canvas) is optimised for a label set.

The paper describes it and never released it. Here the prompt starts from the labeled example that, among those
annotating the most labels, best predicts the other examples as a one-shot prompt (so it starts at the best
one-shot quality the project offers) and is then trained by gradient descent through the frozen network,
with the same balanced smooth L1 as training, on every labeled example as a target. The result is two tensors in
the model's normalized input space; they are saved as safetensors with the labels in the metadata.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load, save

from .errors import PromptError
from .loss import balanced_loss
from .model import SegGpt
from .palette import make_palette
from .predictor import Prompt
from .transforms import as_mask, image_to_tensor, label_map_to_tensor, open_image, resize_label_map

__all__ = ["LearnedPrompt", "TuneSettings", "tune_prompt", "example_tensors"]

# A step's progress report: (step, steps, loss).
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class LearnedPrompt:
    """A tuned prompt for `labels` (sorted; label i is painted in palette color i + 1)."""

    labels: tuple[str, ...]
    image: torch.Tensor  # (3, h, w), normalized like model inputs
    mask: torch.Tensor  # (3, h, w), normalized like model inputs
    info: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Content digest: the same tensors and labels give the same digest (it goes into model versions)."""
        hasher = hashlib.sha256(json.dumps(self.labels).encode())
        for tensor in (self.image, self.mask):
            hasher.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return hasher.hexdigest()[:16]

    def to_bytes(self) -> bytes:
        metadata = {"labels": json.dumps(list(self.labels)), "info": json.dumps(self.info, sort_keys=True)}
        tensors = {"image": self.image.detach().to("cpu", torch.float32).contiguous(), "mask": self.mask.detach().to("cpu", torch.float32).contiguous()}
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "learned prompt") -> "LearnedPrompt":
        try:
            tensors = load(data)
            # safetensors' loaders return no metadata from bytes; its header is an 8-byte length then JSON.
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            metadata = header.get("__metadata__") or {}
            labels = tuple(json.loads(metadata["labels"]))
            info = json.loads(metadata.get("info", "{}"))
        except Exception as exc:  # noqa: BLE001 - any decoding failure means the same thing to the caller
            raise PromptError(f"{where}: not a learned prompt file ({type(exc).__name__}: {exc})") from None
        if set(tensors) != {"image", "mask"} or tensors["image"].shape != tensors["mask"].shape or not labels:
            raise PromptError(f"{where}: expected tensors 'image' and 'mask' of one shape and a label list")
        return cls(labels, tensors["image"], tensors["mask"], info)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_bytes(self.to_bytes())
        temporary.replace(path)  # readers never see half a file
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LearnedPrompt":
        return cls.from_bytes(Path(path).read_bytes(), where=str(path))


@dataclass(frozen=True)
class TuneSettings:
    steps: int = 150
    lr: float = 0.01  # 0.05 drifts away from a well-chosen start (bench/prompt_tuning.py: 0.7629 against 0.7687)
    batch: int = 8
    seed: int = 0
    max_examples: int = 256  # a larger project is sampled: every example is held on the device as two canvases
    start_candidates: int = 16  # examples tried as the starting prompt, each painting the others (one forward each)


def example_tensors(model: SegGpt, examples: Sequence[Prompt], labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, painted label canvases, foreground masks) of `examples` at the model's input size, label i of
    `labels` in palette color i + 1: the targets of tuning, or of a held-out check."""
    size = model.config.half_size
    palette = make_palette(len(labels))
    images, canvases, foregrounds = [], [], []
    for index, example in enumerate(examples):
        image = open_image(example.image, where=f"example {index}")
        shape = (image.height, image.width)
        label_map = np.zeros(size, dtype=np.uint8)
        for value, label in enumerate(labels, start=1):
            if label in example.masks:  # a label an example does not annotate counts as absent from it
                mask = as_mask(example.masks[label], shape, where=f"example {index}, label {label!r}")
                label_map[resize_label_map(mask.astype(np.uint8), size) > 0] = value
        images.append(image_to_tensor(image, size))
        canvases.append(label_map_to_tensor(label_map, palette, size))
        foregrounds.append(torch.from_numpy(label_map > 0))
    return torch.stack(images), torch.stack(canvases), torch.stack(foregrounds)


@torch.no_grad()
def _best_start(model: SegGpt, examples: Sequence[Prompt], labels: Sequence[str], images: torch.Tensor, canvases: torch.Tensor,
                foregrounds: torch.Tensor, settings: TuneSettings) -> int:
    """The example to start from: of those annotating the most labels (the first `start_candidates`), the one whose
    one-shot painting of the other examples has the lowest loss. Where one example is a poor prompt, tuning from
    it spends its steps undoing that (bench/prompt_tuning.py)."""
    most = max(sum(label in example.masks for label in labels) for example in examples)
    candidates = [i for i, example in enumerate(examples) if sum(label in example.masks for label in labels) == most]
    candidates = candidates[: max(1, settings.start_candidates)]
    if len(candidates) == 1 or len(examples) == 1:
        return candidates[0]
    dtype = next(model.parameters()).dtype
    losses = []
    was_training = model.training
    model.eval()
    for candidate in candidates:
        others = [i for i in range(len(examples)) if i != candidate]
        total = 0.0
        for begin in range(0, len(others), settings.batch):
            chosen = torch.tensor(others[begin : begin + settings.batch], device=images.device)
            count = chosen.numel()
            painted = model(images[chosen].to(dtype), images[candidate][None].expand(count, -1, -1, -1).to(dtype),
                            canvases[candidate][None].expand(count, -1, -1, -1).to(dtype), target_only=True)
            total += float(balanced_loss(painted.float(), canvases[chosen], foregrounds[chosen])) * count
        losses.append(total / len(others))
    model.train(was_training)
    return candidates[int(np.argmin(losses))]


def tune_prompt(
    model: SegGpt,
    examples: Sequence[Prompt],
    settings: TuneSettings = TuneSettings(),
    progress: Progress | None = None,
) -> LearnedPrompt:
    """Learn one prompt for every label the `examples` annotate; the model's weights are not changed."""
    if not examples:
        raise PromptError("prompt tuning needs at least one labeled example")
    labels = tuple(sorted({label for example in examples for label in example.masks}))
    if not labels:
        raise PromptError("prompt tuning needs examples that annotate at least one label")
    if len(examples) > settings.max_examples:
        keep = np.random.default_rng(settings.seed).choice(len(examples), settings.max_examples, replace=False)
        examples = [examples[i] for i in sorted(keep)]
    param = next(model.parameters())
    images, canvases, foregrounds = example_tensors(model, examples, labels)
    images, canvases = images.to(param.device, torch.float32), canvases.to(param.device, torch.float32)
    foregrounds = foregrounds.to(param.device)
    start = _best_start(model, examples, labels, images, canvases, foregrounds, settings)
    learned_image = images[start].clone().requires_grad_(True)
    learned_mask = canvases[start].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([learned_image, learned_mask], lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    started, loss_value = time.perf_counter(), float("nan")
    try:
        for step in range(1, settings.steps + 1):
            chosen = torch.randperm(len(examples), generator=generator)[: settings.batch].to(param.device)
            count = chosen.numel()
            painted = model(
                images[chosen].to(param.dtype),
                learned_image[None].expand(count, -1, -1, -1).to(param.dtype),
                learned_mask[None].expand(count, -1, -1, -1).to(param.dtype),
                target_only=True,
            )
            loss = balanced_loss(painted.float(), canvases[chosen], foregrounds[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            if progress is not None:
                progress(step, settings.steps, loss_value)
    finally:
        for p, flag in zip(model.parameters(), requires):
            p.requires_grad_(flag)
        model.train(was_training)
    info = {"examples": len(examples), "steps": settings.steps, "final_loss": round(loss_value, 5),
            "seconds": round(time.perf_counter() - started, 2), "initial_example": start}
    return LearnedPrompt(labels, learned_image.detach().cpu(), learned_mask.detach().cpu(), info)
