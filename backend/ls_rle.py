"""Label Studio's brush RLE, encoded and decoded with numpy.

Written here instead of calling `label_studio_sdk.converter.brush.mask2rle`, which builds the bitstream as a Python
string one run at a time. On a 1920x1080 mask that takes seconds; this takes milliseconds
(`bench/cpu_cost_per_task.py` measures both). The SDK's `decode_rle` reads our output in the tests. Its decoder
walks a Python string of every bit (14 ms a 1920x1080 mask); `rle_to_flat` walks the runs only
(bench/pool_sync.py), gives the same values, and names what is wrong in a malformed stream instead of
decoding garbage or failing deep inside.

Stream (MSB first): 32 bits value count, 5 bits word size - 1 (7), four 4-bit run-length field sizes - 1
(3, 4, 8, 16 bits), then one group per run: flag 1 (a repeated word), 2 bits naming the field size,
(count - 1) in that many bits, the 8-bit word. Zero-padded to a whole byte. The decoder also reads the other
kind of group that Label Studio's own (JavaScript) encoder writes: flag 0, the field size, (count - 1), then
`count` words one after another.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_to_rle", "rle_to_flat"]

_FIELD_BITS = np.array([3, 4, 8, 16])
_MAX_RUN = 1 << 16
_HEADER_BITS = 53
_WINDOW = (1 << 64) - 1


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


def rle_to_flat(rle) -> np.ndarray:
    """The values a brush RLE (a list of byte values, as Label Studio stores it) encodes, as a flat uint8 array:
    for a brush mask, the (height * width * 4) RGBA buffer. Equal to the SDK's `decode_rle` on every valid stream.

    Raises ValueError, naming what is wrong, for a stream that is not bytes, is cut short, holds a run past the
    value count it declares, or declares values wider than 8 bits."""
    data = np.frombuffer(rle, dtype=np.uint8) if isinstance(rle, (bytes, bytearray)) else np.asarray(rle)
    if data.ndim != 1 or (data.size and (data.dtype.kind not in "iu" or data.min() < 0 or data.max() > 255)):
        raise ValueError("brush RLE: not a list of byte values (integers 0 to 255)")
    total_bits = data.size * 8
    if total_bits < _HEADER_BITS:
        raise ValueError(f"brush RLE truncated: {data.size} bytes, its header alone takes 7")
    # the 64 bits from each byte on: any group's fields (at most 3 + 16 + 8 bits) lie within one window's
    # first 57 bits, whichever bit of its byte the group starts at
    padded = np.concatenate([data.astype(np.uint64), np.zeros(7, dtype=np.uint64)])
    windows = np.zeros(data.size, dtype=np.uint64)
    for k in range(8):
        windows |= padded[k : k + data.size] << np.uint64(56 - 8 * k)
    words = windows.tolist()
    header = words[0]
    count_declared, word_bits = header >> 32, ((header >> 27) & 31) + 1
    field_bits = [((header >> (23 - 4 * k)) & 15) + 1 for k in range(4)]
    if word_bits > 8:
        raise ValueError(f"brush RLE: declares {word_bits}-bit values; a brush mask holds bytes (8 bits)")
    word_mask = (1 << word_bits) - 1
    # one Python step per run (a 1920x1080 mask has about a thousand); the values are laid out by numpy after
    counts, values, literals = [], [], []
    position, done = _HEADER_BITS, 0
    while done < count_declared:
        if position + 3 > total_bits:
            raise ValueError(f"brush RLE truncated: {done} of {count_declared} values decoded when the stream ends")
        window = (words[position >> 3] << (position & 7)) & _WINDOW
        width = field_bits[(window >> 61) & 3]
        count = ((window >> (61 - width)) & ((1 << width) - 1)) + 1
        if window >> 63:  # one word repeated `count` times
            end = position + 3 + width + word_bits
            values.append((window >> (64 - end + position)) & word_mask)
        else:  # `count` words in a row
            end = position + 3 + width + count * word_bits
            literals.append((done, position + 3 + width, count))
            values.append(0)
        if end > total_bits:
            raise ValueError(f"brush RLE truncated: the run of {count} values from value {done} ends at bit {end}, "
                             f"past the stream's {total_bits} bits")
        if done + count > count_declared:
            raise ValueError(f"brush RLE: a run of {count} values from value {done} goes past the {count_declared} "
                             "values the stream declares")
        counts.append(count)
        done += count
        position = end
    flat = np.repeat(np.array(values, dtype=np.uint8), np.array(counts, dtype=np.int64))
    if literals:
        starts, bits, lengths = (np.array(column, dtype=np.int64) for column in zip(*literals))
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        at = np.repeat(bits, lengths) + within * word_bits
        shifted = windows[at >> 3] << (at & 7).astype(np.uint64)
        flat[np.repeat(starts, lengths) + within] = (shifted >> np.uint64(64 - word_bits)).astype(np.uint8)
    return flat
