"""An overlay grid a person can look at: each image with its predicted masks tinted, side by side."""

from __future__ import annotations

import colorsys
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["display_color", "overlay", "grid"]


def display_color(index: int) -> tuple[int, int, int]:
    """Well-separated hues (golden-ratio steps), the same label index always the same color."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay(image: Image.Image, masks: Mapping[str, np.ndarray], labels: Sequence[str], alpha: float = 0.5) -> Image.Image:
    """`image` with each mask blended in its label's display color (labels fix the color order)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for label, mask in masks.items():
        color = np.asarray(display_color(labels.index(label)), dtype=np.float32)
        pixels[mask] = (1 - alpha) * pixels[mask] + alpha * color
    return Image.fromarray(pixels.astype(np.uint8))


def grid(tiles: Sequence[tuple[str, Image.Image]], tile_height: int = 200, columns: int = 4,
         legend: Sequence[str] = ()) -> Image.Image:
    """Tiles scaled to one height, laid out in rows, each captioned; with `legend`, a last row naming each label
    beside a swatch of its display color."""
    scaled = []
    for caption, tile in tiles:
        width = max(1, round(tile.width * tile_height / max(1, tile.height)))
        scaled.append((caption, tile.resize((width, tile_height), Image.NEAREST)))
    cell_width = max(tile.width for _, tile in scaled)
    rows = (len(scaled) + columns - 1) // columns
    caption_height = 14
    legend_height = 20 * len(legend) + (8 if legend else 0)
    width = max(cell_width * min(columns, len(scaled)), 160 if legend else 0)
    sheet = Image.new("RGB", (width, rows * (tile_height + caption_height) + legend_height), "white")
    draw = ImageDraw.Draw(sheet)
    top = rows * (tile_height + caption_height) + 4
    for index, label in enumerate(legend):
        y = top + 20 * index
        draw.rectangle([4, y, 20, y + 14], fill=display_color(index), outline="black")
        draw.text((26, y + 2), label[:60], fill="black")
    for index, (caption, tile) in enumerate(scaled):
        x, y = (index % columns) * cell_width, (index // columns) * (tile_height + caption_height)
        sheet.paste(tile, (x, y + caption_height))
        draw.text((x + 2, y + 1), caption[:40], fill="black")
    return sheet
