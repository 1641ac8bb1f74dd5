"""Opening images (from a path, bytes, a file object, a PIL image or an array, to RGB with EXIF orientation applied),
and shrinking one exactly as the network's input resize does.

Without torch, so that processes that only read images (the prompt pool's sync in a control worker) never load it;
`transforms` re-exports these names and does everything that needs tensors.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import pyspng
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .limits import DEFAULT_MAX_PIXELS

__all__ = ["ImageLike", "open_image", "open_reduced", "to_rgb", "resize_as_network"]

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
    """An 8-bit PNG as RGB, decoded by libspng: 0.66x the time of Pillow's decoder on bench/scale.py's PNGs
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


# torch's antialiased bicubic on uint8 (what `transforms.image_to_tensor` runs): Pillow's resampling scheme, Keys'
# cubic (a = -0.5), int16 fixed-point weights, a horizontal pass rounded to uint8, then a vertical one. Computed
# here with numpy, to the bit (tests/test_transforms.py compares the two on random sizes).
_CUBIC_A = -0.5


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((_CUBIC_A + 2) * x - (_CUBIC_A + 3)) * x * x + 1
    far = ((_CUBIC_A * x - 5 * _CUBIC_A) * x + 8 * _CUBIC_A) * x - 4 * _CUBIC_A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _fixed_point_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(first input index per output, int weights per output and tap, precision bits) of one axis."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    last = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    taps = int((last - first).max())
    offsets = np.arange(taps)
    weights = _cubic((first[:, None] + offsets[None, :] - centers[:, None] + 0.5) * invscale)
    weights[offsets[None, :] >= (last - first)[:, None]] = 0.0
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, totals, out=weights, where=totals != 0)
    precision = 0
    for precision in range(22):  # the most bits that keep the largest weight within int16
        if int(0.5 + weights.max() * (1 << (precision + 1))) >= (1 << 15):
            break
    scaled = weights * (1 << precision)
    return first, np.trunc(np.where(weights < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32), precision


# Output indices per band: each band is a float64 matrix product over the inputs its outputs reach. Larger bands
# waste products on zero weights, smaller ones pay numpy's cost per call (of 8, 16 and 32 on bench/scale.py's images, 16).
_BAND = 16
# Image rows per strip of the horizontal pass: its float64 copy (128 x 3 x 1920 x 8 bytes) stays in the caches.
_STRIP = 128
# Each product is kept at most this many multiply-adds (m * n * k), under which OpenBLAS runs it on the calling
# thread: threaded, these small products spent 3 to 5x the CPU, idle threads spinning, and the pool syncs
# from several threads already.
_ONE_THREAD = 4 * 65536


def _bands(first: np.ndarray, weights: np.ndarray, in_size: int) -> list[tuple[int, int, int, int, np.ndarray]]:
    """(first output, end output, first input, end input, float64 weights of outputs x inputs) per band of outputs."""
    taps = weights.shape[1]
    lengths = np.minimum(first + taps, in_size) - first  # taps past the input's end weigh 0 and read nothing
    bands = []
    for start in range(0, len(first), _BAND):
        end = min(start + _BAND, len(first))
        low, high = int(first[start]), int((first[start:end] + lengths[start:end]).max())
        matrix = np.zeros((end - start, high - low + taps))
        columns = (first[start:end] - low)[:, None] + np.arange(taps)[None, :]
        matrix[np.arange(end - start)[:, None], columns] = weights[start:end]
        bands.append((start, end, low, high, matrix[:, : high - low]))
    return bands


def _rounded(sums: np.ndarray, precision: int) -> np.ndarray:
    """Fixed-point sums back to pixel values, in place: add half, floor-divide by 2**precision, clip to 0..255."""
    sums += 1 << (precision - 1)
    sums *= 1.0 / (1 << precision)  # a power of two: exact, so the floor equals the integer shift
    np.floor(sums, out=sums)
    return np.clip(sums, 0, 255, out=sums)


def _resample_axis(pixels: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One pass of the resize, as banded matrix products in float64: every product and partial sum is an integer
    below 2**53 (255 x 2**15 x the taps), so the sums are the exact int32 sums of the fixed-point scheme (float32
    would not be: they can pass 2**24). 5x less CPU than a gather per tap (bench/pool_sync.py)."""
    in_size = pixels.shape[axis]
    first, weights, precision = _fixed_point_weights(in_size, out_size)
    bands = _bands(first, weights, in_size)
    widest = max(matrix.size for *_, matrix in bands)
    if axis == 0:  # rows: (outputs x inputs) @ (inputs x a strip of the rest), on the contiguous layout
        source = pixels.reshape(in_size, -1)
        out = np.empty((out_size, source.shape[1]), dtype=np.uint8)
        step = max(1, _ONE_THREAD // widest)
        for left in range(0, source.shape[1], step):
            strip = source[:, left : left + step].astype(np.float64)
            sums = np.empty((out_size, strip.shape[1]))
            for start, end, low, high, matrix in bands:
                np.matmul(matrix, strip[low:high], out=sums[start:end])
            out[:, left : left + step] = _rounded(sums, precision)
        return out.reshape((out_size,) + pixels.shape[1:])
    height, width, channels = pixels.shape  # columns: strips of rows, channels moved before the columns
    out = np.empty((height, out_size, channels), dtype=np.uint8)
    for top in range(0, height, _STRIP):
        bottom = min(height, top + _STRIP)
        strip = np.array(pixels[top:bottom].transpose(0, 2, 1), dtype=np.float64, order="C").reshape(-1, width)
        sums = np.empty((strip.shape[0], out_size))
        for start, end, low, high, matrix in bands:
            step = max(1, _ONE_THREAD // matrix.size)
            for row in range(0, strip.shape[0], step):
                np.matmul(strip[row : row + step, low:high], matrix.T, out=sums[row : row + step, start:end])
        out[top:bottom] = _rounded(sums, precision).reshape(bottom - top, channels, out_size).transpose(0, 2, 1)
    return out


def resize_as_network(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` as RGB at `size` (height, width), resized exactly as the network resizes its input: an image stored
    this way at the network's input size reaches the network with the same pixels as its original."""
    pixels = np.asarray(to_rgb(image))
    height, width = size
    if pixels.shape[1] != width:
        pixels = _resample_axis(pixels, width, 1)
    if pixels.shape[0] != height:
        pixels = _resample_axis(pixels, height, 0)
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
