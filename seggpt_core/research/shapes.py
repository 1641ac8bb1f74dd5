"""Shape-category episodes: colored shapes on textured backgrounds, with one mask per shape category.

The harder set: a class is a shape (disc, square, triangle, star, ring) in any color, so the prompt's mask must
say which shape is meant. A seed fixes everything.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .episodes import Episode, Scene

__all__ = ["CATEGORIES", "Scene", "make_scene", "make_episode", "category_scenes"]

CATEGORIES = ("disc", "square", "triangle", "star", "ring")
# Shape radius as a share of the shorter side, in episodes: small enough for overlaps, large enough that a 4-pixel
# patch grid at 48 px still sees the corners and holes that tell the categories apart.
EPISODE_SIZES = (0.12, 0.28)


def _polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [angle + np.pi / 4 + k * np.pi / 2 for k in range(4)]
        return [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in corners]
    if kind == "triangle":
        corners = [angle + k * 2 * np.pi / 3 for k in range(3)]
        return [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in corners]
    if kind == "star":
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else radius * 0.45
            a = angle + k * np.pi / 5
            points.append((cx + r * np.cos(a), cy + r * np.sin(a)))
        return points
    raise ValueError(kind)


def _draw(kind: str, size: tuple[int, int], cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if kind == "disc":
        draw.ellipse(box, fill=255)
    elif kind == "ring":
        draw.ellipse(box, fill=255)
        inner = radius * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_polygon(kind, cx, cy, radius, angle), fill=255)
    return np.asarray(canvas) > 0


def make_scene(
    seed: int,
    size: tuple[int, int] = (120, 160),
    categories: tuple[str, ...] = CATEGORIES,
    shapes: tuple[int, int] = (2, 5),
    must_include: tuple[str, ...] = (),
    sizes: tuple[float, float] = (0.08, 0.2),
) -> Scene:
    """A scene of `shapes[0]..shapes[1]` shapes (later ones occlude earlier ones), fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    height, width = size
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(height, width, 1)) + rng.normal(0, 8, size=(height, width, 3))
    yy, xx = np.mgrid[:height, :width]
    gradient = (np.sin(xx / rng.uniform(8, 40) + rng.uniform(0, 6)) * rng.uniform(0, 30))[..., None]
    pixels = np.clip(base + noise + gradient, 0, 255)
    count = int(rng.integers(shapes[0], shapes[1] + 1))
    kinds = list(must_include) + [str(rng.choice(categories)) for _ in range(max(0, count - len(must_include)))]
    rng.shuffle(kinds)
    masks = {c: np.zeros(size, dtype=bool) for c in categories}
    for kind in kinds:
        radius = rng.uniform(*sizes) * min(height, width)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        shape = _draw(kind, size, cx, cy, radius, rng.uniform(0, 2 * np.pi))
        color = rng.integers(0, 256, size=3)
        texture = rng.normal(0, rng.uniform(0, 25), size=(height, width, 3))
        pixels[shape] = np.clip(color + texture[shape], 0, 255)
        for other in masks.values():
            other[shape] = False  # occluded
        masks[kind] |= shape
    return Scene(Image.fromarray(pixels.astype(np.uint8)), masks)


def make_episode(
    seed: int,
    shots: int = 1,
    targets: int = 1,
    size: tuple[int, int] = (96, 96),
    labels: int = 1,
    sizes: tuple[float, float] = EPISODE_SIZES,
    distractors: int = 2,
) -> Episode:
    """An episode whose prompts and targets all contain the chosen categories, among distractors; every image
    comes from its own seed, so held-out episodes (other seeds) never share an image with training ones."""
    rng = np.random.default_rng(seed)
    chosen = tuple(str(c) for c in rng.choice(CATEGORIES, size=labels, replace=False))
    base = int(rng.integers(0, 2**31 - 1))
    shapes = (labels + 1, labels + distractors)  # at least one distractor, at most `distractors`
    make = lambda offset: make_scene(base + offset, size=size, shapes=shapes, must_include=chosen, sizes=sizes)  # noqa: E731
    return Episode(chosen, [make(i) for i in range(shots)], [make(1000 + i) for i in range(targets)])


def category_scenes(category: str, count: int, first_seed: int, size: tuple[int, int] = (96, 96)) -> list[Scene]:
    """`count` scenes that all contain `category` among one or two distractors, drawn like episode images."""
    return [make_scene(first_seed + i, size=size, shapes=(2, 3), must_include=(category,), sizes=EPISODE_SIZES) for i in range(count)]
