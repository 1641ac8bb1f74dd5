"""Few-shot segmentation with a loaded SegGPT: prompts are prepared once, then many targets are predicted.

Labels are handled in groups: a label is predicted only from the prompts that annotate it, so a prompt that
says nothing about a label never teaches the model that the label is absent. Labels annotated by exactly the same
prompts share one forward, each painted in its own palette color.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import ImageError, PromptError
from .model import SegGpt
from .palette import decode_colors, make_palette
from .transforms import (
    DEFAULT_MAX_PIXELS,
    ImageLike,
    MaskLike,
    as_mask,
    denormalize,
    image_to_tensor,
    label_map_to_tensor,
    mosaic,
    open_image,
    resize_label_map,
)

__all__ = ["Prompt", "PreparedTarget", "Segmentation", "SegGptPredictor"]


@dataclass(frozen=True)
class Prompt:
    """An annotated example: an image and one mask per label it annotates.

    A label present with an empty mask means "annotated, and absent here"; a label missing from `masks` means
    "not annotated in this image". Masks are (height, width) in the image's displayed orientation.
    """

    image: ImageLike
    masks: Mapping[str, MaskLike]


@dataclass(frozen=True)
class PreparedTarget:
    """A target image preprocessed for the model, with its original (height, width)."""

    tensor: torch.Tensor
    size: tuple[int, int]


@dataclass
class Segmentation:
    """One target's result: a boolean mask at the original size and a score in [0, 1] per label."""

    masks: dict[str, np.ndarray]
    scores: dict[str, float]
    size: tuple[int, int]


@dataclass
class _LabelGroup:
    labels: list[str]
    prompt_indices: tuple[int, ...]
    palette: np.ndarray
    images: torch.Tensor  # (K, 3, h, w) on the model's device and dtype
    masks: torch.Tensor  # (K, 3, h, w)
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.images.shape[0]


class SegGptPredictor:
    """Runs SegGPT in context. Not thread-safe: give each worker thread its own predictor.

    Args:
        model: a loaded network (see `load_model`); its device and dtype are used for inference.
        embedding_type: "instance" (official default) or "semantic".
        spatial_ensemble: stitch the K prompts of a group into one canvas (the paper's spatial ensemble) instead
            of the feature ensemble.
        max_batch_rows: upper bound on prompt rows per forward; targets are batched T at a time with T * K rows.
        max_pixels: images larger than this are refused (decompression-bomb guard).
    """

    def __init__(
        self,
        model: SegGpt,
        *,
        embedding_type: str = "instance",
        spatial_ensemble: bool = False,
        max_batch_rows: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if embedding_type not in ("instance", "semantic"):
            raise ValueError(f"embedding_type must be 'instance' or 'semantic', got {embedding_type!r}")
        self.model = model.eval()
        self.embedding_type = embedding_type
        self.spatial_ensemble = spatial_ensemble
        self.max_batch_rows = max(1, int(max_batch_rows))
        self.max_pixels = max_pixels
        self.size = model.config.half_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._groups: list[_LabelGroup] = []

    @property
    def labels(self) -> list[str]:
        """Labels of the current prompt set, in the order they were first seen."""
        return [label for group in self._groups for label in group.labels]

    @property
    def groups(self) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
        """(labels, prompt indices) of each forward group: labels annotated by exactly the same prompts."""
        return [(tuple(group.labels), group.prompt_indices) for group in self._groups]

    def set_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Validate and preprocess `prompts` onto the device, once for all following `predict` calls."""
        if not prompts:
            raise PromptError("no prompts given: at least one annotated image is needed")
        images: list[Image.Image] = []
        masks: list[dict[str, np.ndarray]] = []
        for index, prompt in enumerate(prompts):
            if not prompt.masks:
                raise PromptError(f"prompt {index} has no masks: it annotates no label")
            try:
                image = open_image(prompt.image, max_pixels=self.max_pixels, where=f"prompt {index}")
                size = (image.height, image.width)
                checked = {}
                for label, mask in prompt.masks.items():
                    if not isinstance(label, str) or not label:
                        raise PromptError(f"prompt {index}: label {label!r} is not a non-empty string")
                    checked[label] = as_mask(mask, size, where=f"prompt {index}, label {label!r}")
            except ImageError as exc:
                raise PromptError(str(exc)) from None
            images.append(image)
            masks.append(checked)

        annotated_by: dict[str, list[int]] = {}
        for index, prompt_masks in enumerate(masks):
            for label in prompt_masks:
                annotated_by.setdefault(label, []).append(index)
        by_prompts: dict[tuple[int, ...], list[str]] = {}
        for label, indices in annotated_by.items():
            by_prompts.setdefault(tuple(indices), []).append(label)
        self._groups = [self._prepare_group(labels, indices, images, masks) for indices, labels in by_prompts.items()]

    def _prepare_group(
        self,
        labels: list[str],
        indices: tuple[int, ...],
        images: list[Image.Image],
        masks: list[dict[str, np.ndarray]],
    ) -> _LabelGroup:
        palette = make_palette(len(labels))
        label_maps = []
        for index in indices:
            label_map = np.zeros(masks[index][labels[0]].shape, dtype=np.uint8)
            for value, label in enumerate(labels, start=1):
                label_map[masks[index][label]] = value  # a later label wins where two overlap
            label_maps.append(label_map)
        group_images = [images[i] for i in indices]
        if self.spatial_ensemble and len(indices) > 1:
            group_images = [mosaic(group_images, self.size, Image.BICUBIC)]
            label_maps = [mosaic(label_maps, self.size, Image.NEAREST)]
        image_tensor = torch.stack([image_to_tensor(image, self.size) for image in group_images])
        mask_tensor = torch.stack([label_map_to_tensor(m, palette, self.size) for m in label_maps])
        to = dict(device=self.device, dtype=self.dtype)
        return _LabelGroup(labels, indices, palette, image_tensor.to(**to), mask_tensor.to(**to))

    def prepare_target(self, image: ImageLike, where: str = "target") -> PreparedTarget:
        """Open and preprocess one target; raises ImageError naming `where` if the image is unusable."""
        rgb = open_image(image, max_pixels=self.max_pixels, where=where)
        return PreparedTarget(image_to_tensor(rgb, self.size), (rgb.height, rgb.width))

    def predict(self, targets: Sequence[ImageLike]) -> list[Segmentation]:
        """Segment every target with the current prompts. Raises ImageError naming the first bad target."""
        prepared = [self.prepare_target(image, where=f"target {i}") for i, image in enumerate(targets)]
        return self.predict_prepared(prepared)

    def segment(self, targets: Sequence[ImageLike], prompts: Sequence[Prompt]) -> list[Segmentation]:
        """`set_prompts(prompts)` then `predict(targets)`."""
        self.set_prompts(prompts)
        return self.predict(targets)

    @torch.no_grad()
    def predict_prepared(self, targets: Sequence[PreparedTarget]) -> list[Segmentation]:
        if not self._groups:
            raise RuntimeError("no prompts set: call set_prompts() before predict()")
        results = [Segmentation({}, {}, target.size) for target in targets]
        for group in self._groups:
            per_forward = max(1, self.max_batch_rows // group.rows)
            for start in range(0, len(targets), per_forward):
                chunk = targets[start : start + per_forward]
                painted = self.paint(torch.stack([t.tensor for t in chunk]), group)
                for target, rgb, result in zip(chunk, denormalize(painted), results[start : start + per_forward]):
                    self._decode(rgb, group, target.size, result)
        return results

    def paint(self, targets: torch.Tensor, group: _LabelGroup) -> torch.Tensor:
        """(T, 3, h, w) normalized targets -> (T, 3, h, w) normalized painted targets for one label group."""
        count, rows = targets.shape[0], group.rows
        pixel_values = targets.to(self.device, self.dtype).repeat_interleave(rows, dim=0)
        return self.model(
            pixel_values,
            group.images.repeat(count, 1, 1, 1),
            group.masks.repeat(count, 1, 1, 1),
            embedding_type=self.embedding_type,
            num_prompts=rows,
            target_only=True,
        )

    @staticmethod
    def _decode(rgb: np.ndarray, group: _LabelGroup, size: tuple[int, int], result: Segmentation) -> None:
        indices, confidence = decode_colors(rgb, group.palette)
        full = resize_label_map(indices, size)
        for value, label in enumerate(group.labels, start=1):
            predicted = indices == value
            # Mean color margin over the predicted region; over the whole image when the label is absent.
            region = confidence[predicted] if predicted.any() else confidence
            result.scores[label] = float(region.mean())
            result.masks[label] = full == value
