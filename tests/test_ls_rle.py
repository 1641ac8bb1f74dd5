"""Label Studio's brush RLE decoded by `rle_to_flat`, checked value for value against the SDK's own `decode_rle`:
random masks, arbitrary RGBA buffers, streams with multi-word literal groups (what Label Studio's JavaScript
encoder writes), the RLEs Label Studio recorded, and malformed streams, which must be refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from backend.label_config import Control
from backend.ls_format import AnnotationError, label_key, masks_from_annotation
from backend.ls_rle import mask_to_rle, rle_to_flat

RECORDED = Path(__file__).parent / "recorded"
BRUSH = Control("tag", "brushlabels", "image", "image", ("Cat", "Dog"))


def _stream(groups: list[tuple[str, list[int]]], count: int, word_bits: int = 8, fields=(3, 4, 8, 16)) -> list[int]:
    """A stream written field by field from the format's description: ("repeat", [n, value]) or ("literal", values)."""
    bits = f"{count:032b}{word_bits - 1:05b}" + "".join(f"{f - 1:04b}" for f in fields)
    for kind, body in groups:
        n = body[0] if kind == "repeat" else len(body)
        field = next(i for i, f in enumerate(fields) if n <= 1 << f)
        bits += ("1" if kind == "repeat" else "0") + f"{field:02b}" + format(n - 1, f"0{fields[field]}b")
        bits += "".join(format(v, f"0{word_bits}b") for v in (body[1:] if kind == "repeat" else body))
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def _recorded_rles() -> list[list[int]]:
    found = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                found.append(value) if key == "rle" and isinstance(value, list) else walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(RECORDED.glob("*.json")):
        walk(json.loads(path.read_text()))
    return found


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (37, 53), (270, 480), (1080, 1920)])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 1.0])
def test_random_masks_decode_as_the_sdk_decodes_them(shape, density):
    rng = np.random.default_rng([shape[0], int(density * 100)])
    mask = rng.random(shape) < density
    if shape[0] > 500:  # blobs, as a brush draws them, rather than noise: the SDK's encoder is slow on noise
        mask = np.zeros(shape, bool)
        mask[100:700, 300:1500] = True
        mask[400:900, 900:1800] ^= rng.random((500, 900)) < density / 10
    for rle in (mask2rle(mask.astype(np.uint8) * 255), mask_to_rle(mask)):
        flat = rle_to_flat(rle)
        assert flat.dtype == np.uint8 and flat.flags.c_contiguous
        assert np.array_equal(flat, decode_rle(rle))
        assert np.array_equal(flat.reshape(*shape, 4) == 255, np.repeat(mask[..., None], 4, axis=2))


def test_any_rgba_buffer_and_single_value_groups_decode_as_the_sdk_decodes_them():
    rng = np.random.default_rng(3)
    for trial in range(20):
        size = int(rng.integers(1, 3000))
        values = rng.integers(0, 256, size)
        values[rng.random(size) < 0.7] = 0  # runs of every length among single values
        rle = encode_rle(values.astype(np.uint8))
        assert np.array_equal(rle_to_flat(rle), decode_rle(rle)), trial
        assert np.array_equal(rle_to_flat(bytes(rle)), values)


def test_literal_groups_narrow_words_and_long_runs_decode_as_the_sdk_decodes_them():
    groups = [("literal", [1, 2, 3]), ("repeat", [9, 200]), ("literal", list(range(20))), ("repeat", [65536, 7]),
              ("literal", [255]), ("repeat", [300, 0])]
    count = 3 + 9 + 20 + 65536 + 1 + 300
    rle = _stream(groups, count)
    assert np.array_equal(rle_to_flat(rle), decode_rle(rle))
    narrow = _stream([("literal", [1, 0, 3, 2]), ("repeat", [5, 3])], 9, word_bits=2, fields=(2, 5, 9, 13))
    assert np.array_equal(rle_to_flat(narrow), decode_rle(narrow))
    assert rle_to_flat(narrow).tolist() == [1, 0, 3, 2, 3, 3, 3, 3, 3]


def test_the_rles_label_studio_recorded_decode_as_the_sdk_decodes_them():
    rles = _recorded_rles()
    assert len(rles) >= 2
    for rle in rles:
        flat = rle_to_flat(rle)
        assert np.array_equal(flat, decode_rle(rle)) and flat.size % 4 == 0


@pytest.mark.parametrize("damage, message", [
    ("no-header", r"truncated: 5 bytes, its header alone takes 7"),
    ("cut-short", r"truncated: \d+ of 40000 values decoded when the stream ends|truncated: the run of \d+ values from value \d+ ends at bit"),
    ("run-past-count", r"a run of 8 values from value 36 goes past the 40 values the stream declares"),
    ("not-bytes", r"not a list of byte values"),
    ("wide-words", r"declares 16-bit values"),
])
def test_malformed_streams_are_refused_by_name(damage, message):
    good = mask_to_rle(np.random.default_rng(1).random((100, 100)) < 0.5)
    rle = {
        "no-header": good[:5],
        "cut-short": good[: len(good) // 2],
        "run-past-count": _stream([("repeat", [36, 255]), ("repeat", [8, 0])], 40),
        "not-bytes": good[:-1] + [256],
        "wide-words": _stream([("repeat", [4, 1])], 4, word_bits=16),
    }[damage]
    with pytest.raises(ValueError, match=message):
        rle_to_flat(rle)


def test_a_stream_that_runs_out_inside_a_group_is_refused():
    rle = _stream([("repeat", [8, 255]), ("literal", list(range(10)))], 18)
    with pytest.raises(ValueError, match="the run of 10 values from value 8 ends at bit"):
        rle_to_flat(rle[:-3])


def test_annotation_masks_mark_pixels_with_any_channel_drawn_and_name_a_bad_stream():
    """`masks_from_annotation` as it read the SDK's decoding before: a pixel belongs to the mask when any of its
    four channels is nonzero (an RGBA buffer with color but no alpha included)."""
    rng = np.random.default_rng(8)
    height, width = 30, 41
    rgba = np.zeros((height, width, 4), np.uint8)
    for channel in range(4):
        rgba[..., channel][rng.random((height, width)) < 0.2] = rng.integers(1, 256)
    rle = encode_rle(rgba.reshape(-1))
    region = {"id": "r1", "from_name": "tag", "to_name": "image", "type": "brushlabels",
              "value": {"format": "rle", "rle": rle, "brushlabels": ["Cat"]}}
    masks = masks_from_annotation([region], [BRUSH], (height, width))
    assert np.array_equal(masks[label_key("tag", "Cat")], decode_rle(rle).reshape(height, width, 4).max(axis=2) > 0)
    broken = {**region, "value": {**region["value"], "rle": rle[: len(rle) // 2]}}
    with pytest.raises(AnnotationError, match="region r1: brush RLE truncated"):
        masks_from_annotation([broken], [BRUSH], (height, width))
