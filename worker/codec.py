"""Plain-JSON encodings for what crosses Redis: binary masks as base64 PNG, bytes as base64."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

__all__ = ["mask_to_png", "png_to_mask", "mask_to_b64png", "b64png_to_mask", "bytes_to_b64", "b64_to_bytes"]


def mask_to_png(mask: np.ndarray) -> bytes:
    """A boolean (height, width) mask as a 1-bit PNG: a few hundred bytes for typical masks."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def png_to_mask(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")) > 0


def mask_to_b64png(mask: np.ndarray) -> str:
    return base64.b64encode(mask_to_png(mask)).decode("ascii")


def b64png_to_mask(text: str) -> np.ndarray:
    return png_to_mask(base64.b64decode(text))


def bytes_to_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64_to_bytes(text: str) -> bytes:
    return base64.b64decode(text)
