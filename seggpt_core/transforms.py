"""The only module that opens, converts, resizes and normalizes images and masks, or maps masks back.

Conventions: sizes are (height, width) unless named `wh`; masks are boolean numpy arrays (height, width) in the
orientation the image is displayed in (EXIF orientation applied).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import pyspng
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .limits import DEFAULT_MAX_PIXELS

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_MAX_PIXELS",
    "ImageLike",
    "MaskLike",
    "open_image",
    "open_reduced",
    "to_rgb",
    "as_mask",
    "image_to_tensor",
    "resize_as_network",
    "label_map_to_tensor",
    "denormalize",
    "resize_label_map",
    "mosaic",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN_255 = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1) * 255.0
_STD_255 = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1) * 255.0
# JFIF's YCbCr -> RGB, the conversion libjpeg applies when it decodes a JPEG to RGB.
_YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])

ImageLike = Union[str, Path, bytes, BinaryIO, Image.Image, np.ndarray]
MaskLike = Union[np.ndarray, Image.Image]


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
        if image.format == "PNG" and image.mode in _SPNG_MODES and isinstance(source, io.BytesIO):
            data = source.getvalue()
            if not _png_has_exif(data):  # Pillow's getexif() would decode the whole PNG to look for one
                return _decode_png(data), (image.height, image.width)
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


# 8-bit PNG modes whose RGB pixels libspng gives exactly as Pillow's decoding and `to_rgb` do (alpha dropped,
# gray repeated); others (16-bit, palettes) stay with Pillow.
_SPNG_MODES = ("RGB", "RGBA", "L")


def _decode_png(data: bytes) -> Image.Image:
    """An 8-bit PNG as RGB, decoded by libspng: about twice as fast as Pillow's decoder on a 1920x1080 PNG
    (bench/png_decode.py), which counts on a worker whose forward shares its core."""
    try:
        pixels = pyspng.load(data, "RGB")
    except RuntimeError as exc:  # libspng reports a corrupt or truncated file this way
        raise ValueError(str(exc)) from None
    return Image.fromarray(pixels, mode="RGB")


def _png_has_exif(data: bytes) -> bool:
    """Whether a PNG holds an eXIf chunk (an orientation to apply), by its chunk headers alone."""
    position = 8
    while position + 8 <= len(data):
        kind = data[position + 4 : position + 8]
        if kind == b"eXIf":
            return True
        if kind == b"IEND":
            return False
        position += 12 + int.from_bytes(data[position : position + 4], "big")
    return False


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


def as_mask(mask: MaskLike, size: tuple[int, int], where: str) -> np.ndarray:
    """A boolean (height, width) mask; non-zero is foreground. Raises ImageError if it does not match `size`."""
    if isinstance(mask, Image.Image):
        mask = ImageOps.exif_transpose(mask)
        mask = np.asarray(mask.convert("L") if mask.mode not in ("1", "L", "P") else mask)
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array.any(axis=2)
    if array.ndim != 2:
        raise ImageError(f"{where}: mask of shape {array.shape} is not a 2-D mask")
    if array.shape != tuple(size):
        raise ImageError(
            f"{where}: mask is {array.shape[1]}x{array.shape[0]} (WxH) but its image is {size[1]}x{size[0]}"
        )
    return array.astype(bool, copy=False)


def _resized_pixels(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) uint8 of an RGB or YCbCr image at `size`: the network's resize (see `image_to_tensor`)."""
    height, width = size
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    if image.size != (width, height):
        pixels = F.interpolate(pixels[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)[0]
    return pixels


def resize_as_network(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` as RGB at `size` (height, width), resized exactly as `image_to_tensor` resizes: an image stored this
    way at the network's input size reaches the network with the same pixels as its original."""
    pixels = _resized_pixels(to_rgb(image), size)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def image_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) float32: bicubic resize to `size`, scale to [0, 1], ImageNet normalization (official).

    The resize is torch's antialiased bicubic on uint8, which computes Pillow's BICUBIC filter (within 2 levels of
    255, mean 0.005) about 4.5x faster: 1.3 instead of 5.7 ms for 960x540 -> 448x448 on one core. A YCbCr image
    (from `open_reduced`) is converted to RGB after the resize, on the fewer pixels.
    """
    if image.mode not in ("RGB", "YCbCr"):
        image = to_rgb(image)
    height, width = size
    pixels = _resized_pixels(image, size)
    # (x / 255 - mean) / std, as (x - 255 mean) / (255 std) on a channels-first float copy: two passes instead of
    # four. Made contiguous while still uint8: broadcasting over a channels-last float layout took twice as long.
    tensor = pixels.contiguous().to(torch.float32)
    if image.mode == "YCbCr":
        tensor[1:] -= 128.0
        tensor = (_YCBCR_TO_RGB @ tensor.reshape(3, -1)).clamp_(0.0, 255.0).reshape(3, height, width)
    return tensor.sub_(_MEAN_255).div_(_STD_255)


def label_map_to_tensor(label_map: np.ndarray, colors: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) float32 colored mask: nearest resize of the label indices, palette lookup, normalization.

    Resizing indices with NEAREST then coloring equals the official NEAREST resize of the colored mask.
    """
    resized = resize_label_map(label_map, size)
    rgb = colors[resized].astype(np.float32) * (1.0 / 255.0)
    rgb = (rgb - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def denormalize(canvas: torch.Tensor) -> np.ndarray:
    """(T, 3, h, w) normalized model output -> (T, h, w, 3) float32 RGB in [0, 255]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    rgb = canvas.detach().float().cpu() * std  # the one new tensor; the rest in place, in the same order
    return rgb.add_(mean).mul_(255.0).clamp_(0.0, 255.0).permute(0, 2, 3, 1).numpy()


def resize_label_map(label_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 (height, width) index map to `size` (height, width)."""
    height, width = size
    if label_map.shape == (height, width):
        return label_map
    image = Image.fromarray(np.ascontiguousarray(label_map, dtype=np.uint8), mode="L")
    return np.asarray(image.resize((width, height), Image.NEAREST))


def mosaic(tiles: list[Any], size: tuple[int, int], resample: int) -> Any:
    """Stitch tiles (PIL images, or uint8 label maps) into a near-square grid and subsample it to `size`.

    The paper's spatial ensemble: several prompts share one canvas half. Empty cells stay black / background.
    """
    height, width = size
    side = int(np.ceil(np.sqrt(len(tiles))))
    as_arrays = isinstance(tiles[0], np.ndarray)
    mode = "L" if as_arrays else "RGB"
    sheet = Image.new(mode, (side * width, side * height))
    for index, tile in enumerate(tiles):
        tile_image = Image.fromarray(tile, mode="L") if as_arrays else tile
        tile_image = tile_image.resize((width, height), resample)
        sheet.paste(tile_image, ((index % side) * width, (index // side) * height))
    result = sheet.resize((width, height), resample)
    return np.asarray(result) if as_arrays else result
