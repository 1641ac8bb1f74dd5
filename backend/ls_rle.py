"""Label Studio's brush RLE, encoded with numpy.

Written here instead of calling `label_studio_sdk.converter.brush.mask2rle`, which builds the bitstream as a Python
string one run at a time. On a 1920x1080 mask that takes seconds; this takes milliseconds
(`bench/cpu_cost_per_task.py` measures both). The SDK's `decode_rle` reads our output in the tests.

Stream (MSB first): 32 bits value count, 5 bits word size - 1 (7), four 4-bit run-length field sizes - 1
(3, 4, 8, 16 bits), then one group per run: flag 1 (a repeated word), 2 bits naming the field size,
(count - 1) in that many bits, the 8-bit word. Zero-padded to a whole byte.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_to_rle"]

_FIELD_BITS = np.array([3, 4, 8, 16])
_MAX_RUN = 1 << 16


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate each value's lowest `width` bits, MSB first, as a uint8 array of 0/1."""
    as_bytes = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    all_bits = np.unpackbits(as_bytes, axis=1)  # (n, 32), MSB first
    keep = np.arange(32)[None, :] >= (32 - widths)[:, None]
    return all_bits[keep]


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """The RLE of a (height, width) boolean or 0/255 mask as Label Studio stores it: an RGBA buffer of
    (height * width * 4) values, each pixel's 4 channels equal (0 or 255).

    A mask that knows its own run starts (`run_starts()`, e.g. seggpt_core's `UpsampledMask`) is encoded
    from them, without scanning a full-size array."""
    if not hasattr(mask, "run_starts"):
        mask = np.asarray(mask)
    pixels = int(np.prod(mask.shape))
    if pixels == 0:
        raise ValueError("cannot encode an empty mask")
    if hasattr(mask, "run_starts"):
        starts, first = mask.run_starts()
        # a binary mask alternates between its two values from one run to the next
        words = ((np.arange(len(starts)) + int(first)) % 2).astype(np.int64) * 255
    else:
        # 0/1 bytes without a copy for boolean masks: scaling a full-size copy to 0/255 cost 1.2 of the 1.9 ms a
        # 1920x1080 mask took (bench/cpu_cost_per_task.py); only the run starts are scaled.
        flat = (mask if mask.dtype == np.bool_ else mask != 0).reshape(-1).view(np.uint8)
        starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
        words = flat[starts].astype(np.int64) * 255
    return _encode(np.asarray(starts, dtype=np.int64), words, pixels)


def _encode(starts: np.ndarray, words: np.ndarray, pixels: int) -> list[int]:
    """The stream for runs of pixels beginning at `starts` (sorted, 0 first), each of one 0/255 value."""
    total = pixels * 4
    lengths = np.diff(np.append(starts, pixels)) * 4  # each pixel contributes 4 equal values
    # split runs longer than the largest field can count
    pieces = (lengths + _MAX_RUN - 1) // _MAX_RUN
    words = np.repeat(words, pieces)
    counts = np.full(pieces.sum(), _MAX_RUN, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    counts[last] = lengths - (pieces - 1) * _MAX_RUN
    field = np.searchsorted(1 << _FIELD_BITS, counts, side="left")  # smallest field with 2**bits >= count
    widths = _FIELD_BITS[field]
    # per group: flag(1) | field index(2) | count - 1 (width) | word(8) as one integer of 11 + width bits
    group_values = (((1 << 2 | field) << widths | (counts - 1)) << 8) | words
    group_widths = 11 + widths
    header = (total << 21) | (7 << 16) | (2 << 12) | (3 << 8) | (7 << 4) | 15  # 32 + 5 + 16 = 53 bits
    header_bits = _bits(np.array([header >> 32, header & 0xFFFFFFFF]), np.array([21, 32]))
    body_bits = _bits(group_values, group_widths)
    stream = np.concatenate([header_bits, body_bits])
    return np.packbits(stream).tolist()  # packbits pads the last byte with zeros
