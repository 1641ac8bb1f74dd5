"""Few-shot segmentation with a loaded SegGPT: prompts are prepared once, then many targets are predicted.

Labels are handled in groups: a label is predicted only from the prompts that annotate it, so a prompt that
says nothing about a label never teaches the model that the label is absent. Labels annotated by exactly the same
prompts share one forward, each painted in its own palette color.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .component_scores import ComponentScores
from .errors import ImageError, PromptError
from .model import SegGpt
from .palette import lookup_colors, make_palette
from .upsampled_mask import UpsampledMask
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
    open_reduced,
    resize_label_map,
)

__all__ = ["Prompt", "PreparedTarget", "Segmentation", "SegGptPredictor"]

if TYPE_CHECKING:
    from .prompt_tuning import LearnedPrompt


# How a label's score is made. "crisp": the soft IoU of the mask with the painted colors (one forward). "agreement":
# that times the IoU of the mask with the one painted on the mirrored target (two forwards; it orders masks by their
# true IoU much better, see docs/benchmarks.md).
SCORES = ("crisp", "agreement")


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
    """One target's result: a boolean mask at the original size and a score in [0, 1] per label.

    The predictor's masks are `UpsampledMask`s: read-only, built at full size only when their pixels are read
    (`np.asarray(mask)`); whether one is empty and its run-length encoding come from the model-sized map."""

    masks: dict[str, np.ndarray | UpsampledMask]
    scores: dict[str, float]
    size: tuple[int, int]
    # label -> a score for each connected component of its mask (one region per instance keeps its own)
    component_scores: dict[str, ComponentScores] = field(default_factory=dict)
    # label -> indices (in the prompt set) of the prompts it was predicted from; a learned prompt's labels have none
    prompts: dict[str, tuple[int, ...]] = field(default_factory=dict)


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
        labels_per_forward: at most this many labels painted in one forward (0: all labels that share prompts, as
            the official demos do). 1 paints every label alone in white: more forwards, but a small model trained on
            one color per episode needs it. None (the default): what the model's config asks for
            (`SegGptConfig.labels_per_forward`: 1 for the shipped `tiny-appearance`, no limit for the real SegGPT).
        score: "crisp" (default) or "agreement" (see SCORES): how each label's score is made.
    """

    def __init__(
        self,
        model: SegGpt,
        *,
        embedding_type: str = "instance",
        spatial_ensemble: bool = False,
        max_batch_rows: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        labels_per_forward: int | None = None,
        score: str = "crisp",
    ) -> None:
        if embedding_type not in ("instance", "semantic"):
            raise ValueError(f"embedding_type must be 'instance' or 'semantic', got {embedding_type!r}")
        self.model = model.eval()
        self.embedding_type = embedding_type
        self.spatial_ensemble = spatial_ensemble
        self.max_batch_rows = max(1, int(max_batch_rows))
        self.max_pixels = max_pixels
        if labels_per_forward is None:
            labels_per_forward = model.config.labels_per_forward
        self.labels_per_forward = max(0, int(labels_per_forward))
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score = score
        self.size = model.config.half_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._groups: list[_LabelGroup] = []
        self._annotated_by: dict[str, tuple[int, ...]] = {}
        self._learned: _LabelGroup | None = None

    @property
    def labels(self) -> list[str]:
        """Labels of the current prompt set, in the order they were first seen (learned-prompt labels last)."""
        return list(self._annotated_by) + (list(self._learned.labels) if self._learned else [])

    @property
    def groups(self) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
        """(labels, prompt indices) of each forward group: labels annotated by exactly the same prompts. A learned
        prompt's group has no prompt indices."""
        return [(tuple(group.labels), group.prompt_indices) for group in self._with_learned(self._groups)]

    def set_prompts(self, prompts: Sequence[Prompt], learned: "LearnedPrompt | None" = None) -> None:
        """Validate and preprocess `prompts` onto the device, once for all following `predict` calls.

        With a `learned` prompt (see `prompt_tuning`), its labels are predicted from it alone; the other labels
        still come from `prompts`.
        """
        if not prompts and learned is None:
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
        self._images, self._masks = images, masks
        self._tensors: dict[int, torch.Tensor] = {}
        self._small_masks: dict[tuple[int, str], np.ndarray] = {}
        self._group_cache: dict[tuple, list[_LabelGroup]] = {}
        self._learned = self._prepare_learned(learned) if learned is not None else None
        covered = set(learned.labels) if learned is not None else set()
        annotated_by: dict[str, list[int]] = {}
        for index, prompt_masks in enumerate(masks):
            for label in prompt_masks:
                if label not in covered:
                    annotated_by.setdefault(label, []).append(index)
        self._annotated_by = {label: tuple(indices) for label, indices in annotated_by.items()}
        self._groups = self._groups_for(self._annotated_by) if self._annotated_by else []

    def nbytes(self) -> int:
        """Host and device memory this predictor's prompts hold (images, masks, prepared tensors, cached groups):
        what a worker's prompt cache is bounded by."""
        # copies of the caches: a heartbeat thread may ask while a forward fills them
        total = sum(image.width * image.height * len(image.getbands()) for image in list(getattr(self, "_images", ())))
        total += sum(mask.nbytes for masks in list(getattr(self, "_masks", ())) for mask in list(masks.values()))
        total += sum(t.numel() * t.element_size() for t in list(getattr(self, "_tensors", {}).values()))
        total += sum(m.nbytes for m in list(getattr(self, "_small_masks", {}).values()))
        for groups in list(getattr(self, "_group_cache", {}).values()):
            total += sum(g.images.numel() * g.images.element_size() + g.masks.numel() * g.masks.element_size() for g in groups)
        return total

    def _with_learned(self, groups: list[_LabelGroup]) -> list[_LabelGroup]:
        """`groups` plus the learned prompt's group, when there is one (it always takes part)."""
        return groups + [self._learned] if self._learned is not None else groups

    def _prepare_learned(self, learned: "LearnedPrompt") -> _LabelGroup:
        expected = (3, *self.size)
        if tuple(learned.image.shape) != expected or tuple(learned.mask.shape) != expected:
            raise PromptError(f"learned prompt is {tuple(learned.image.shape)}, this model takes {expected}: "
                              "it was tuned for another model; tune it again")
        to = dict(device=self.device, dtype=self.dtype)
        labels = list(learned.labels)
        return _LabelGroup(labels, (), make_palette(len(labels)), learned.image[None].to(**to), learned.mask[None].to(**to))

    def prompts_for(self, label: str) -> list[Prompt]:
        """The prompts that annotate `label`, each with only that label's mask, in prompt order."""
        return [Prompt(self._images[i], {label: self._masks[i][label]}) for i in self._annotated_by.get(label, ())]

    def sibling(self, prompts: Sequence[Prompt]) -> "SegGptPredictor":
        """A predictor on the same model and settings with `prompts` set (the model is shared, not copied)."""
        other = SegGptPredictor(self.model, embedding_type=self.embedding_type, spatial_ensemble=self.spatial_ensemble,
                                max_batch_rows=self.max_batch_rows, max_pixels=self.max_pixels,
                                labels_per_forward=self.labels_per_forward, score=self.score)
        other.set_prompts(prompts)
        return other

    @property
    def prompt_count(self) -> int:
        return len(self._images) if self._groups or self._learned else 0

    def annotated_by(self) -> dict[str, tuple[int, ...]]:
        """label -> indices of the prompts that annotate it."""
        return dict(self._annotated_by)

    def prompt_image(self, index: int) -> Image.Image:
        """Prompt `index` resized to the model's input size (for embeddings and previews)."""
        height, width = self.size
        return self._images[index].resize((width, height), Image.BICUBIC)

    def _groups_for(self, selection: Mapping[str, Sequence[int]]) -> list[_LabelGroup]:
        """Forward groups for `selection` (label -> prompt indices): labels with the same prompts share one."""
        signature = tuple(sorted((label, tuple(indices)) for label, indices in selection.items()))
        cached = self._group_cache.get(signature)
        if cached is not None:
            return cached
        unknown = [label for label in selection if label not in self._annotated_by]
        if unknown:
            raise PromptError(f"labels {unknown} are not annotated by any prompt")
        by_prompts: dict[tuple[int, ...], list[str]] = {}
        for label, indices in selection.items():
            if not indices:
                raise PromptError(f"label {label!r}: no prompts selected")
            strays = [i for i in indices if label not in self._masks[i]]
            if strays:
                raise PromptError(f"label {label!r}: prompts {strays} do not annotate it")
            by_prompts.setdefault(tuple(indices), []).append(label)
        # Colors follow the sorted label names: the same prompts give the same painting however they arrived.
        step = self.labels_per_forward or None
        groups = [
            self._prepare_group(ordered[start : start + step] if step else ordered, indices)
            for indices, labels in by_prompts.items()
            for ordered in [sorted(labels)]
            for start in range(0, len(ordered), step or len(ordered))
        ]
        if len(self._group_cache) >= 64:
            self._group_cache.pop(next(iter(self._group_cache)))
        self._group_cache[signature] = groups
        return groups

    def _image_tensor(self, index: int) -> torch.Tensor:
        if index not in self._tensors:
            self._tensors[index] = image_to_tensor(self._images[index], self.size).to(self.device, self.dtype)
        return self._tensors[index]

    def _small_mask(self, index: int, label: str) -> np.ndarray:
        key = (index, label)
        if key not in self._small_masks:
            self._small_masks[key] = resize_label_map(self._masks[index][label].astype(np.uint8), self.size) > 0
        return self._small_masks[key]

    def _prepare_group(self, labels: list[str], indices: tuple[int, ...]) -> _LabelGroup:
        palette = make_palette(len(labels))
        if self.spatial_ensemble and len(indices) > 1:
            label_maps = []
            for index in indices:
                label_map = np.zeros(self._masks[index][labels[0]].shape, dtype=np.uint8)
                for value, label in enumerate(labels, start=1):
                    label_map[self._masks[index][label]] = value
                label_maps.append(label_map)
            image = mosaic([self._images[i] for i in indices], self.size, Image.BICUBIC)
            image_tensor = image_to_tensor(image, self.size)[None]
            mask_tensor = label_map_to_tensor(mosaic(label_maps, self.size, Image.NEAREST), palette, self.size)[None]
        else:
            # Nearest-resizing each label's mask, then combining, equals nearest-resizing the combined label map.
            label_maps = []
            for index in indices:
                label_map = np.zeros(self.size, dtype=np.uint8)
                for value, label in enumerate(labels, start=1):
                    label_map[self._small_mask(index, label)] = value  # a later label wins where two overlap
                label_maps.append(label_map)
            image_tensor = torch.stack([self._image_tensor(i) for i in indices])
            mask_tensor = torch.stack([label_map_to_tensor(m, palette, self.size) for m in label_maps])
        to = dict(device=self.device, dtype=self.dtype)
        return _LabelGroup(labels, indices, palette, image_tensor.to(**to), mask_tensor.to(**to))

    def prepare_target(self, image: ImageLike, where: str = "target") -> PreparedTarget:
        """Open and preprocess one target; raises ImageError naming `where` if the image is unusable.

        Large JPEGs are decoded at a reduced DCT scale that still covers the model's input size (see
        `open_reduced`); masks still come back at the original size."""
        rgb, size = open_reduced(image, self.size, max_pixels=self.max_pixels, where=where)
        return PreparedTarget(image_to_tensor(rgb, self.size), size)

    def predict(self, targets: Sequence[ImageLike]) -> list[Segmentation]:
        """Segment every target with the current prompts. Raises ImageError naming the first bad target."""
        prepared = [self.prepare_target(image, where=f"target {i}") for i, image in enumerate(targets)]
        return self.predict_prepared(prepared)

    def segment(self, targets: Sequence[ImageLike], prompts: Sequence[Prompt]) -> list[Segmentation]:
        """`set_prompts(prompts)` then `predict(targets)`."""
        self.set_prompts(prompts)
        return self.predict(targets)

    @torch.no_grad()
    def predict_prepared(
        self,
        targets: Sequence[PreparedTarget],
        selections: Sequence[Mapping[str, Sequence[int]]] | None = None,
    ) -> list[Segmentation]:
        """Segment prepared targets. `selections`, one per target, restrict each label to chosen prompts
        (label -> prompt indices); by default every label uses every prompt that annotates it."""
        results = self._painted(targets, selections)
        for position, result in enumerate(results):
            chosen = self._annotated_by if selections is None else selections[position]
            result.prompts = {label: tuple(chosen[label]) for label in result.masks if label in chosen}
        if self.score == "agreement":
            # Paint the mirrored targets too: where the two paintings disagree, the model is guessing. The score is
            # the crisp score times the IoU of the two masks, at the price of a second forward per target.
            mirrored = self._painted([PreparedTarget(t.tensor.flip(-1), t.size) for t in targets], selections)
            for result, other in zip(results, mirrored):
                for label, mask in result.masks.items():
                    mine = np.asarray(mask.label_map) == mask.value
                    theirs = (np.asarray(other.masks[label].label_map) == other.masks[label].value)[:, ::-1]
                    union = np.count_nonzero(mine | theirs)
                    agreement = float(np.count_nonzero(mine & theirs) / union) if union else 1.0
                    result.scores[label] *= agreement
                    result.component_scores[label].factor = agreement  # each instance region's score follows
        return results

    def _painted(self, targets: Sequence[PreparedTarget], selections: Sequence[Mapping[str, Sequence[int]]] | None) -> list[Segmentation]:
        if not self._groups and self._learned is None:
            raise RuntimeError("no prompts set: call set_prompts() before predict()")
        if selections is not None and len(selections) != len(targets):
            raise ValueError(f"{len(selections)} selections for {len(targets)} targets")
        results = [Segmentation({}, {}, target.size) for target in targets]
        batches: dict[tuple, list[int]] = {}
        for position in range(len(targets)):
            selection = self._annotated_by if selections is None else selections[position]
            signature = tuple(sorted((label, tuple(indices)) for label, indices in selection.items()))
            batches.setdefault(signature, []).append(position)
        for signature, positions in batches.items():
            for group in self._with_learned(self._groups_for(dict(signature)) if signature else []):
                per_forward = max(1, self.max_batch_rows // group.rows)
                for start in range(0, len(positions), per_forward):
                    chunk = positions[start : start + per_forward]
                    painted = self.paint(torch.stack([targets[p].tensor for p in chunk]), group)
                    for position, rgb in zip(chunk, denormalize(painted)):
                        self._decode(rgb, group, targets[position].size, results[position])
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
        indices, confidence, runner_up = lookup_colors(rgb, group.palette)
        # Score: the soft IoU of the mask with the painted colors. A pixel belongs to a label by (1 + margin) / 2
        # where the label's color is nearest and by (1 - margin) / 2 where it is second (never both). Crisp painting
        # scores 1, a mask with wide fringes of in-between colors scores low, no mask scores 0.
        # Two bincounts over (nearest, runner-up) pairs give all four per-color sums.
        colors = len(group.palette)
        pairs = indices.ravel().astype(np.intp) * colors + runner_up.ravel()
        pair_count = np.bincount(pairs, minlength=colors * colors).reshape(colors, colors)
        pair_margin = np.bincount(pairs, weights=confidence.ravel(), minlength=colors * colors).reshape(colors, colors)
        count, margin_in = pair_count.sum(axis=1), pair_margin.sum(axis=1)
        fringe, margin_out = pair_count.sum(axis=0), pair_margin.sum(axis=0)
        for value, label in enumerate(group.labels, start=1):
            union = count[value] + (fringe[value] - margin_out[value]) / 2
            result.scores[label] = float((count[value] + margin_in[value]) / 2 / union) if count[value] else 0.0
            result.masks[label] = UpsampledMask(indices, value, size)
            result.component_scores[label] = ComponentScores(indices, confidence, runner_up, value, size)
