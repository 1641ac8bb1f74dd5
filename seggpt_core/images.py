"""Opening images: from a path, bytes, a file object, a PIL image or an array, to RGB with EXIF orientation applied.

Without torch, so that processes that only read images (the prompt pool's sync in a control worker) never load it;
`transforms` re-exports these names and does everything that needs tensors.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .limits import DEFAULT_MAX_PIXELS

__all__ = ["ImageLike", "open_image", "open_reduced", "to_rgb"]

ImageLike = Union[str, Path, bytes, BinaryIO, Image.Image, np.ndarray]


def _check_area(width: int, height: int, max_pixels: int, where: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{where}: image has zero area ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{where}: image is {width}x{height} = {width * height} pixels, more than the limit {max_pixels}")


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Scale a single-channel integer or float array to uint8 without clipping the content away."""
    values = values.astype(np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1.0:
        scaled = values * 255.0  # float images in [0, 1]
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257.0  # 16-bit range
    else:
        scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: 16-bit and float images are scaled to 8 bits, alpha is dropped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;"):
        gray = _to_8bit(np.asarray(image))
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def open_image(source: ImageLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, where: str = "image") -> Image.Image:
    """Open an image from a path, bytes, file object, PIL image or array; apply EXIF orientation; return RGB.

    Raises ImageError (naming `where`) for unreadable, truncated, empty, zero-area or oversized images.
    """
    return _open(source, max_pixels, where, None)[0]


def open_reduced(
    source: ImageLike, at_least: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS, where: str = "image"
) -> tuple[Image.Image, tuple[int, int]]:
    """Like `open_image`, but a JPEG may be decoded at a reduced scale (1/2, 1/4 or 1/8, in the DCT) as long as
    both sides stay at least `at_least` (height, width): the model sees 448 x 448 anyway. A YCbCr-coded JPEG
    also stays in YCbCr (mode "YCbCr"): `image_to_tensor` converts it after the resize, on the model-sized pixels
    (a 1920x1080 JPEG decodes in 9.8 ms instead of 11.6, bench/cpu_cost_per_task.py). Returns the image, RGB or
    YCbCr, and the original (height, width), EXIF applied."""
    return _open(source, max_pixels, where, at_least)


def _open(source: ImageLike, max_pixels: int, where: str, at_least: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, np.ndarray):
            image = _array_to_image(source, where)
        else:
            if isinstance(source, (bytes, bytearray)):
                if not source:
                    raise ImageError(f"{where}: empty file (0 bytes)")
                source = io.BytesIO(source)
            with warnings.catch_warnings():
                # Opening reads only the header; `max_pixels` is enforced just below, before any decoding.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(source)
        _check_area(image.width, image.height, max_pixels, where)
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if at_least is not None and image.format == "JPEG":
            need = max(at_least)
            image.draft("YCbCr" if _jpeg_is_ycbcr(image) else "RGB", (need, need))
        image.load()
        if orientation != 1:  # exif_transpose copies the image even when it has nothing to turn
            image = ImageOps.exif_transpose(image)
        return (image if image.mode == "YCbCr" and at_least is not None else to_rgb(image)), (height, width)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, 2 x Image.MAX_IMAGE_PIXELS
        raise ImageError(f"{where}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{where}: not an image file, or a format Pillow cannot read") from None
    except FileNotFoundError:
        raise ImageError(f"{where}: no such file {source}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data surfaces as these
        raise ImageError(f"{where}: corrupt or truncated image ({exc})") from None


def _jpeg_is_ycbcr(image: Image.Image) -> bool:
    """Whether a 3-component JPEG is coded in YCbCr, by libjpeg's own rule: a JFIF marker says so, an Adobe
    marker says so unless its transform is 0, and otherwise only component ids 'R', 'G', 'B' mean RGB. Asking
    libjpeg for YCbCr output from an RGB-coded file would fail to decode."""
    layers = getattr(image, "layer", None)
    if image.mode != "RGB" or not layers or len(layers) != 3:
        return False
    if "jfif" in image.info:
        return True
    if "adobe" in image.info:
        return image.info.get("adobe_transform") != 0
    return [layer[0] for layer in layers] != ["R", "G", "B"]


def _array_to_image(array: np.ndarray, where: str) -> Image.Image:
    if array.ndim == 2:
        return Image.fromarray(_to_8bit(array) if array.dtype != np.uint8 else array, mode="L")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        if array.dtype != np.uint8:
            array = _to_8bit(array)
        return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), mode="RGB")
    raise ImageError(f"{where}: array of shape {array.shape} is not an image (expected HxW, HxWx3 or HxWx4)")
