"""Appearance-class episodes: classes told apart only by their look, so that only the prompt says which to paint.

A class is a color pair and a texture (flat, stripes at an angle, checker, dots, noise, a gradient), each with its
own contrast. Its instances are blobs of random shape and size, so shape says nothing of the class; each instance
jitters in brightness and hue. Every prompt and target image of an episode holds the label's class and at least
one other class of the episode, on a random textured background: "paint every object" earns little, and a
network that ignores the prompt's mask cannot tell which class is meant.

Two families, drawn by separate code paths:
- "train": the textures, blob shapes and backgrounds that training draws;
- "heldout": others that training never draws (concentric rings, cross-hatching, waves and a two-tone split;
  polygons, crescents and rounded bars; striped, tiled and vignetted backgrounds), to measure generalization.

Seeds fix everything. Training draws episode seeds below `HELD_OUT_SEED`, evaluation above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .episodes import HELD_OUT_SEED, Episode, Scene

__all__ = [
    "FAMILIES",
    "TRAIN_TEXTURES",
    "HELDOUT_TEXTURES",
    "AppearanceClass",
    "make_class",
    "make_appearance_scene",
    "make_appearance_episode",
    "apply_condition",
    "make_project",
    "HELD_OUT_SEED",
]

TRAIN_TEXTURES = ("flat", "stripes", "checker", "dots", "noise", "gradient")
HELDOUT_TEXTURES = ("rings", "crosshatch", "waves", "split")
FAMILIES = ("train", "heldout")
# Blob radius as a share of the shorter side: large enough for a 12x12 patch grid to see the edge, small enough
# that 2 to 5 blobs fit with room for the background.
BLOB_SIZES = (0.12, 0.24)
# Two classes of an episode that share a texture differ at least this much in mean color (of 441 at most), so
# that the episode has an answer.
_MIN_COLOR_DISTANCE = 70.0


@dataclass(frozen=True)
class AppearanceClass:
    """How the instances of one class look: `color_a` where the texture is 0, `color_b` where it is 1."""

    texture: str
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    period: float  # pixels of the generated image, for periodic textures
    angle: float
    jitter: float  # standard deviation of an instance's brightness offset (levels of 255)

    @property
    def mean_color(self) -> np.ndarray:
        return (np.asarray(self.color_a) + np.asarray(self.color_b)) / 2


def make_class(rng: np.random.Generator, family: str = "train", jitter: float = 8.0) -> AppearanceClass:
    textures = TRAIN_TEXTURES if family == "train" else HELDOUT_TEXTURES
    texture = str(rng.choice(textures))
    color_a = rng.uniform(0, 255, size=3)
    if texture == "flat":
        color_b = color_a
    else:
        # each class its own contrast: from a faint pattern to a strong one
        contrast = rng.uniform(35, 130)
        direction = rng.normal(size=3)
        color_b = np.clip(color_a + contrast * direction / (np.linalg.norm(direction) + 1e-9), 0, 255)
    return AppearanceClass(texture, tuple(float(v) for v in color_a), tuple(float(v) for v in color_b),
                           float(rng.uniform(5, 12)), float(rng.uniform(0, np.pi)), float(jitter))


def _pattern(texture: str, size: tuple[int, int], period: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """(height, width) float in [0, 1]: where the texture shows color_b. Phases are drawn per instance."""
    height, width = size
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    phase = rng.uniform(0, period)
    along = xx * np.cos(angle) + yy * np.sin(angle) + phase
    across = -xx * np.sin(angle) + yy * np.cos(angle) + rng.uniform(0, period)
    if texture == "flat":
        return np.zeros(size, np.float32)
    if texture == "stripes":
        return ((along % period) < period / 2).astype(np.float32)
    if texture == "checker":
        cell = period * 0.6
        return (((along // cell) + (across // cell)) % 2).astype(np.float32)
    if texture == "dots":
        du, dv = (along % period) - period / 2, (across % period) - period / 2
        return (du * du + dv * dv < (period * 0.3) ** 2).astype(np.float32)
    if texture == "noise":
        return (rng.random(size) < 0.5).astype(np.float32)
    if texture == "gradient":
        span = max(height, width)
        return np.clip((along - phase) / span + 0.5, 0, 1).astype(np.float32)
    # held-out family
    if texture == "rings":
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        return ((np.hypot(yy - cy, xx - cx) % period) < period / 2).astype(np.float32)
    if texture == "crosshatch":
        return (((along % period) < period * 0.25) | ((across % period) < period * 0.25)).astype(np.float32)
    if texture == "waves":
        bent = along + 0.25 * period * np.sin(across * 2 * np.pi / (2.5 * period))
        return ((bent % period) < period / 2).astype(np.float32)
    if texture == "split":
        return (along - phase > (height + width) * rng.uniform(0.2, 0.5)).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def _blob(size: tuple[int, int], rng: np.random.Generator, family: str, sizes: tuple[float, float]) -> np.ndarray:
    """A random shape's (height, width) bool mask, centered so that most of it lies in the image."""
    height, width = size
    radius = rng.uniform(*sizes) * min(height, width)
    cx, cy = rng.uniform(radius * 0.8, width - radius * 0.8), rng.uniform(radius * 0.8, height - radius * 0.8)
    # only the box the shape can reach is computed: 3x faster than the whole image (generation fed the training
    # loop at 0.45 s of a 1.5 s step before)
    reach = radius * 1.6
    top, bottom = max(0, int(cy - reach)), min(height, int(np.ceil(cy + reach)) + 1)
    left, right = max(0, int(cx - reach)), min(width, int(np.ceil(cx + reach)) + 1)
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    rotation = rng.uniform(0, 2 * np.pi)
    u = (xx - cx) * np.cos(rotation) + (yy - cy) * np.sin(rotation)
    v = -(xx - cx) * np.sin(rotation) + (yy - cy) * np.cos(rotation)
    if family == "train":
        # a smooth radial blob: an ellipse with a few random harmonics on its outline
        aspect = rng.uniform(0.6, 1.0)
        u, v = u * np.sqrt(aspect), v / np.sqrt(aspect)
        theta, distance = np.arctan2(v, u), np.hypot(u, v)
        outline = np.ones_like(theta)
        for k in (2, 3, 4, 5):
            outline += rng.uniform(-0.18, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        inside = distance < radius * outline
    else:
        inside = _heldout_shape(u, v, radius, rng)
    mask = np.zeros(size, dtype=bool)
    mask[top:bottom, left:right] = inside
    return mask


def _heldout_shape(u: np.ndarray, v: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(("polygon", "crescent", "bar"))
    if kind == "polygon":
        corners = int(rng.integers(3, 7))
        theta, distance = np.arctan2(v, u), np.hypot(u, v)
        sector = 2 * np.pi / corners
        # distance to the edge of a regular polygon at each angle
        edge = radius * np.cos(sector / 2) / np.cos((theta % sector) - sector / 2)
        return distance < edge
    if kind == "crescent":
        inner = rng.uniform(0.5, 0.8) * radius
        offset = rng.uniform(0.35, 0.6) * radius
        return (np.hypot(u, v) < radius) & (np.hypot(u - offset, v) > inner)
    length, thickness = radius * rng.uniform(1.0, 1.5), radius * rng.uniform(0.35, 0.6)
    corner = thickness * 0.5
    du, dv = np.maximum(np.abs(u) - (length - corner), 0), np.maximum(np.abs(v) - (thickness - corner), 0)
    return np.hypot(du, dv) < corner


def _background(size: tuple[int, int], rng: np.random.Generator, family: str) -> np.ndarray:
    height, width = size
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    pixels = base + rng.normal(0, rng.uniform(3, 15), size=(height, width, 1)) + rng.normal(0, 5, size=(height, width, 3))
    if family == "train":
        # a soft gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(height, width)
        pixels += (ramp * rng.uniform(-40, 40))[..., None]
        return pixels
    kind = rng.choice(("stripes", "tiles", "vignette"))
    if kind == "stripes":
        period = rng.uniform(14, 30)
        pixels += (((xx + yy * rng.uniform(-1, 1)) % period < period / 2) * rng.uniform(-35, 35))[..., None]
    elif kind == "tiles":
        cell = rng.uniform(16, 32)
        pixels += ((((xx // cell) + (yy // cell)) % 2) * rng.uniform(-30, 30))[..., None]
    else:
        distance = np.hypot(xx - width / 2, yy - height / 2) / max(height, width)
        pixels *= (1 - rng.uniform(0.4, 0.9) * distance**2)[..., None]
    return pixels


def _instance_colors(cls: AppearanceClass, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An instance's two colors: a brightness offset and a small hue shift."""
    shift = rng.normal(0, cls.jitter) + rng.normal(0, cls.jitter * 0.4, size=3)
    return np.asarray(cls.color_a) + shift, np.asarray(cls.color_b) + shift


def make_appearance_scene(
    seed: int,
    classes: dict[str, AppearanceClass],
    must_include: tuple[str, ...],
    size: tuple[int, int] = (96, 96),
    blobs: tuple[int, int] = (2, 5),
    family: str = "train",
    sizes: tuple[float, float] = BLOB_SIZES,
    min_share: float = 0.02,
) -> Scene:
    """A scene of `blobs[0]..blobs[1]` instances of `classes` (later ones occlude earlier ones) that shows every
    class of `must_include` on at least `min_share` of the image; fully determined by `seed`."""
    height, width = size
    for attempt in range(20):
        rng = np.random.default_rng([seed, attempt])
        pixels = _background(size, rng, family)
        count = max(len(must_include), int(rng.integers(blobs[0], blobs[1] + 1)))
        names = list(classes)
        kinds = list(must_include) + [names[int(rng.integers(len(names)))] for _ in range(count - len(must_include))]
        rng.shuffle(kinds)
        masks = {name: np.zeros(size, dtype=bool) for name in classes}
        for name in kinds:
            cls = classes[name]
            shape = _blob(size, rng, family, sizes)
            color_a, color_b = _instance_colors(cls, rng)
            pattern = _pattern(cls.texture, size, cls.period, cls.angle, rng)[shape][:, None]
            pixels[shape] = color_a + (color_b - color_a) * pattern
            for other in masks.values():
                other[shape] = False  # occluded
            masks[name] |= shape
        if all(masks[name].mean() >= min_share for name in must_include):
            break
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return Scene(image, masks)


def _distinct(candidate: AppearanceClass, chosen: list[AppearanceClass]) -> bool:
    for other in chosen:
        distance = float(np.linalg.norm(candidate.mean_color - other.mean_color))
        if distance < _MIN_COLOR_DISTANCE and (candidate.texture == other.texture or distance < _MIN_COLOR_DISTANCE / 2):
            return False
    return True


def episode_classes(rng: np.random.Generator, count: int, family: str, jitter: float) -> dict[str, AppearanceClass]:
    """`count` classes that an episode can tell apart, named by texture ("stripes", "stripes-2", ...)."""
    chosen: list[AppearanceClass] = []
    while len(chosen) < count:
        candidate = make_class(rng, family, jitter)
        if _distinct(candidate, chosen):
            chosen.append(candidate)
    named: dict[str, AppearanceClass] = {}
    for cls in chosen:
        name, n = cls.texture, 2
        while name in named:
            name, n = f"{cls.texture}-{n}", n + 1
        named[name] = cls
    return named


@dataclass
class AppearanceEpisode(Episode):
    """An episode of appearance classes; `classes` describes every class of the episode (labels and others)."""

    classes: dict[str, AppearanceClass] = field(default_factory=dict)

    def group(self, label: str) -> str:
        """The label's texture, which reports group results by."""
        return self.classes[label].texture


def make_appearance_episode(
    seed: int,
    shots: int = 1,
    targets: int = 1,
    size: tuple[int, int] = (96, 96),
    labels: int = 1,
    family: str = "train",
    classes: tuple[int, int] = (3, 4),
    jitter: float = 8.0,
    paired: bool = False,
) -> AppearanceEpisode:
    """An episode of 3 or 4 classes whose `labels` chosen classes (2 with `paired`: a pair of labels to train on
    alternately) appear in every prompt and target image beside at least one other class of the episode.

    `jitter` is the instances' brightness spread: raise it for episodes whose instances vary, where more prompts
    should help. Every image has its own seed, so held-out episodes never share an image with training ones."""
    if family not in FAMILIES:
        raise ValueError(f"unknown episode family {family!r}; known: {', '.join(FAMILIES)}")
    rng = np.random.default_rng([seed, 17])
    count = int(rng.integers(classes[0], classes[1] + 1))
    wanted = 2 if paired else labels
    if wanted >= count:
        raise ValueError(f"{wanted} labels need more than {count} classes per episode (one must stay unlabeled)")
    named = episode_classes(rng, count, family, jitter)
    chosen = tuple(str(c) for c in rng.choice(list(named), size=wanted, replace=False))
    others = [c for c in named if c not in chosen]
    base = int(rng.integers(0, 2**31 - 1))

    def scene(offset: int) -> Scene:
        # the chosen classes and at least one other
        extra = str(np.random.default_rng([base, offset]).choice(others))
        return make_appearance_scene(base + offset, named, chosen + (extra,), size=size, family=family,
                                     blobs=(len(chosen) + 1, max(5, len(chosen) + 2)))

    return AppearanceEpisode(chosen, [scene(i) for i in range(shots)], [scene(1000 + i) for i in range(targets)], classes=named)


def apply_condition(image: Image.Image, gain: np.ndarray, tint: np.ndarray) -> Image.Image:
    """The same scene under another light: each channel scaled by `gain` and shifted by `tint` (levels)."""
    pixels = np.asarray(image, dtype=np.float32) * np.asarray(gain, np.float32) + np.asarray(tint, np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def make_project(seed: int, scenes: int, family: str = "train", jitter: float = 8.0,
                 size: tuple[int, int] = (96, 96)) -> tuple[str, list[Scene]]:
    """A labeling project: 3 or 4 fixed classes, one of them the label, and `scenes` scenes that each show the
    label beside at least one other class (for prompt tuning: the first scenes are the labeled tasks)."""
    rng = np.random.default_rng([seed, 23])
    named = episode_classes(rng, int(rng.integers(3, 5)), family, jitter)
    label = str(rng.choice(list(named)))
    others = [c for c in named if c != label]
    drawn = []
    for index in range(scenes):
        extra = str(np.random.default_rng([seed, index, 1]).choice(others))
        drawn.append(make_appearance_scene(seed * 1000 + index, named, (label, extra), size=size, family=family))
    return label, drawn
