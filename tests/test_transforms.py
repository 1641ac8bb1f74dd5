"""Image preprocessing: torch's resize against Pillow's, and JPEGs kept in YCbCr until after the resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from seggpt_core.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, open_image, open_reduced

STD_255 = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


def _photo(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([np.sin(xx / 9.0 + k) * 90 + np.cos(yy / 13.0 - k) * 60 + 128 for k in range(3)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **options)
    return buffer.getvalue()


def _pillow_reference(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    resized = np.asarray(image.resize(size[::-1], Image.BICUBIC), dtype=np.float32) / 255.0
    normalized = (resized - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(normalized.transpose(2, 0, 1).copy())


@pytest.mark.parametrize("source, size", [((540, 960), (448, 448)), ((37, 211), (448, 448)), ((300, 200), (96, 48)), ((1, 1), (8, 8))])
def test_resize_computes_pillows_bicubic(source, size):
    image = _photo(*source)
    ours, pillow = image_to_tensor(image, size), _pillow_reference(image, size)
    assert ours.shape == (3, *size) and ours.is_contiguous()
    levels = ((ours - pillow).abs() * STD_255).max().item()  # in 0..255 steps
    assert levels <= 2.01, levels


def test_a_jfif_jpeg_stays_ycbcr_until_after_the_resize():
    data = _jpeg(_photo(1080, 1920))
    reduced, size = open_reduced(data, (448, 448))
    assert (reduced.mode, reduced.size, size) == ("YCbCr", (960, 540), (1080, 1920))
    from_rgb = image_to_tensor(open_reduced(data, (448, 448))[0].convert("RGB"), (448, 448))
    ours = image_to_tensor(reduced, (448, 448))
    difference = (ours - from_rgb).abs() * STD_255
    # resizing before the conversion scales uint8 rounding by up to 1.77 (the Cb -> B factor)
    assert difference.mean().item() < 1.0 and difference.max().item() < 8, (difference.mean(), difference.max())
    # and the whole path stays close to the full decode the official code starts from
    full = _pillow_reference(open_image(data), (448, 448))
    assert ((ours - full).abs() * STD_255).mean().item() < 2.0


@pytest.mark.parametrize("options, mode", [({"keep_rgb": True}, "RGB"), ({}, "YCbCr")])
def test_rgb_coded_jpegs_are_not_asked_for_ycbcr(options, mode):
    """libjpeg cannot turn an RGB-coded JPEG into YCbCr: such files must decode as before, not fail."""
    image = _photo(600, 800, seed=3)
    reduced, _ = open_reduced(_jpeg(image, **options), (224, 224))
    assert reduced.mode == mode
    tensor = image_to_tensor(reduced, (224, 224))
    assert ((tensor - _pillow_reference(image, (224, 224))).abs() * STD_255).mean().item() < 3.0


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_other_jpeg_color_spaces_come_back_rgb(mode):
    reduced, size = open_reduced(_jpeg(_photo(500, 700).convert(mode)), (100, 100))
    assert reduced.mode == "RGB" and size == (500, 700)
    assert image_to_tensor(reduced, (100, 100)).shape == (3, 100, 100)


def _png(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA", "I;16"])
def test_png_bytes_decode_to_the_pixels_pillow_gives(mode):
    """8-bit RGB, RGBA and gray PNGs are decoded by libspng, the rest by Pillow: the RGB pixels are Pillow's either way."""
    from seggpt_core.transforms import to_rgb

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    image = {"RGB": lambda: Image.fromarray(pixels[:, :, :3]), "RGBA": lambda: Image.fromarray(pixels),
             "L": lambda: Image.fromarray(pixels[:, :, 0]), "P": lambda: Image.fromarray(pixels[:, :, :3]).quantize(16),
             "LA": lambda: Image.fromarray(pixels[:, :, 0]).convert("LA"),
             "I;16": lambda: Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 250)}[mode]()
    data = _png(image)
    expected = np.asarray(to_rgb(Image.open(io.BytesIO(data))))
    assert np.array_equal(np.asarray(open_image(data)), expected)
    reduced, size = open_reduced(data, (448, 448))
    assert np.array_equal(np.asarray(reduced), expected) and size == (37, 53)


def test_a_png_with_an_exif_orientation_is_turned():
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise to display
    turned, size = open_reduced(_png(image, exif=exif.tobytes()), (448, 448))
    assert turned.size == (20, 30) and size == (30, 20)
    assert np.array_equal(np.asarray(turned), np.asarray(image.transpose(Image.Transpose.ROTATE_270)))


@pytest.mark.parametrize("damage", ["cut-in-half", "last-bytes-missing", "garbage-inside"])
def test_a_damaged_png_is_an_image_error_naming_the_task(damage):
    from seggpt_core import ImageError

    data = _png(Image.fromarray(np.random.default_rng(5).integers(0, 256, (300, 300, 3), dtype=np.uint8)))
    half = len(data) // 2
    damaged = {"cut-in-half": data[:half], "last-bytes-missing": data[:-20],
               "garbage-inside": data[:half] + b"x" * 50 + data[half + 50 :]}[damage]
    with pytest.raises(ImageError, match="task 7: corrupt or truncated image"):
        open_image(damaged, where="task 7")
def test_the_torch_free_resize_gives_the_networks_pixels_to_the_bit():
    """`resize_as_network` (numpy, for processes without torch: the control worker's prompt-pool sync) against the
    network's own resize (torch's antialiased bicubic on uint8), on random sizes, noise and flat images alike."""
    from seggpt_core.images import resize_as_network
    from seggpt_core.transforms import _resized_pixels

    rng = np.random.default_rng(5)
    for trial in range(24):
        height, width = (int(v) for v in rng.integers(20, 1400, size=2))
        size = (min(height, int(rng.integers(8, 500))), min(width, int(rng.integers(8, 500))))
        if trial % 2:
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        else:
            pixels = np.zeros((height, width, 3), dtype=np.uint8)
            pixels[: height // 2] = (250, 3, 120)
        image = Image.fromarray(pixels)
        expected = _resized_pixels(image, size).permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(resize_as_network(image, size)), expected), (height, width, size)


@pytest.mark.parametrize("seed", range(4))
def test_the_banded_resize_matches_torch_upscaling_downscaling_and_mixed(seed):
    """The banded matrix products of `resize_as_network` against torch on many random sizes: each axis shrunk,
    kept or enlarged (the network enlarges small prompts to 448), outputs of a few pixels to several bands, noise
    (which reaches the clipping at 0 and 255 through the cubic's negative lobes) and flat images."""
    from seggpt_core.images import resize_as_network
    from seggpt_core.transforms import _resized_pixels

    rng = np.random.default_rng([11, seed])
    for trial in range(12):
        height, width = (int(v) for v in rng.integers(1, 700, size=2))
        # shrinking at most 64x per axis: past about 100x, torch's weights and ours (old and new alike) can differ
        # by one level at rare pixels (590 -> 1 column); the pool shrinks to 448, so 64x is a 28,672-pixel side
        least = [-(-side // 64) for side in (height, width)]
        size = tuple(int(rng.choice([rng.integers(low, max(low, 8) + 1), rng.integers(max(low, 8), 600), side]))
                     for side, low in zip((height, width), least))
        if trial % 3:
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        else:
            pixels = np.where(rng.random((height, width, 1)) < 0.5, 255, 0).astype(np.uint8).repeat(3, axis=2)
        image = Image.fromarray(pixels)
        expected = _resized_pixels(image, size).permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(resize_as_network(image, size)), expected), (height, width, size)
