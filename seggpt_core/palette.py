"""Label colors for prompt masks and nearest-color decoding of painted outputs."""

from __future__ import annotations

import numpy as np

__all__ = ["make_palette", "decode_colors"]


def make_palette(num_labels: int) -> np.ndarray:
    """(num_labels + 1, 3) uint8 colors: row 0 is black (background), row i is label i.

    The same spacing as transformers' SegGPT processor: a cube of `base` levels per channel, counted down from
    white, so one label is painted white as in the official demos.
    """
    if num_labels < 0:
        raise ValueError(f"num_labels must be >= 0, got {num_labels}")
    # base ** 3 >= num_labels even where the float cube root falls just short (64 ** (1/3) = 3.999...).
    base = int(num_labels ** (1 / 3)) + 1
    step = 256 // base
    colors = [(0, 0, 0)]
    for i in range(num_labels):
        colors.append((255 - (i // base**2) * step, 255 - ((i % base**2) // base) * step, 255 - (i % base) * step))
    return np.asarray(colors, dtype=np.uint8)


def decode_colors(rgb: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette color of every pixel.

    Args:
        rgb: (..., 3) float RGB in [0, 255].
        palette: (n + 1, 3) colors, background first.

    Returns:
        indices (...) uint8 into the palette, and confidence (...) float32 in [0, 1]: the margin
        (d2 - d1) / (d2 + d1) between the nearest (d1) and second-nearest (d2) color distances. 1 means the
        pixel sits exactly on a palette color, 0 means it is halfway between two.
    """
    colors = palette.astype(np.float32)
    pixels = rgb.reshape(-1, 3).astype(np.float32, copy=False)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, as one matrix product
    squared = (pixels * pixels).sum(1, keepdims=True) - 2.0 * pixels @ colors.T + (colors * colors).sum(1)[None]
    np.maximum(squared, 0.0, out=squared)
    if colors.shape[0] == 1:
        indices = np.zeros(pixels.shape[0], dtype=np.uint8)
        return indices.reshape(rgb.shape[:-1]), np.ones(rgb.shape[:-1], dtype=np.float32)
    nearest_two = np.partition(squared, 1, axis=1)[:, :2]
    indices = squared.argmin(axis=1).astype(np.uint8)
    d1, d2 = np.sqrt(nearest_two[:, 0]), np.sqrt(nearest_two[:, 1])
    confidence = (d2 - d1) / np.maximum(d2 + d1, 1e-6)
    return indices.reshape(rgb.shape[:-1]), confidence.astype(np.float32).reshape(rgb.shape[:-1])
