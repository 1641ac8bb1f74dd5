"""All the CPU work of one task except the forward, for a 1920x1080 JPEG with 3 labels, on one core.

Steps: decode, preprocess (resize + normalize), color decoding of the painted 448x448 output with the masks at
1920x1080 and scores (ours: the predictor's own `_decode`, reported under color_decode), brush RLE, result JSON.
Ours (reduced-scale JPEG decode kept in YCbCr, torch's antialiased bicubic on uint8, colors decoded through a
table, masks kept model-sized, numpy RLE from the small map's runs) against the naive path (full-resolution decode,
the official preprocessing: Pillow's bicubic resize and a float normalization, exact nearest-color decoding,
per-label resize, the SDK's `mask2rle`), side by side, interleaved.
The painted output is a fixed synthetic canvas (three colored shapes plus noise), so both paths decode the same
thing. Prints per-step medians; the last line is `ratio=<ours/naive>`.

    python bench/cpu_cost_per_task.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.label_config import Control  # noqa: E402
from backend.ls_format import label_key, prediction_for  # noqa: E402
from seggpt_core.palette import decode_colors, make_palette  # noqa: E402
from seggpt_core.predictor import SegGptPredictor, Segmentation, _LabelGroup  # noqa: E402
from seggpt_core.research.shapes import make_scene  # noqa: E402
from seggpt_core.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, image_to_tensor, label_map_to_tensor, open_image, open_reduced, resize_label_map  # noqa: E402

SIZE = (448, 448)
LABELS = ("Cat", "Dog", "Car")
CONTROL = Control("tag", "brushlabels", "image", "image", LABELS)


GROUP = _LabelGroup(list(LABELS), (0,), make_palette(len(LABELS)), torch.zeros(1, 3, 1, 1), torch.zeros(1, 3, 1, 1))


def fixture() -> tuple[bytes, torch.Tensor, np.ndarray]:
    scene = make_scene(7, size=(1080, 1920), shapes=(6, 8), must_include=("disc", "star", "square"))
    buffer = io.BytesIO()
    scene.image.save(buffer, format="JPEG", quality=90)
    label_map = np.zeros(SIZE, dtype=np.uint8)
    for value, shape in enumerate(("disc", "star", "square"), start=1):
        small = resize_label_map(scene.masks[shape].astype(np.uint8), SIZE) > 0
        label_map[small] = value
    palette = make_palette(3)
    painted = label_map_to_tensor(label_map, palette, SIZE)
    painted += torch.randn_like(painted, generator=torch.Generator().manual_seed(0)) * 0.15
    return buffer.getvalue(), painted[None], palette


def ours(data: bytes, painted: torch.Tensor, palette: np.ndarray, times: dict) -> dict:
    t0 = time.perf_counter()
    image, size = open_reduced(data, SIZE)
    t1 = time.perf_counter()
    image_to_tensor(image, SIZE)
    t2 = time.perf_counter()
    rgb = denormalize(painted)[0]
    # the predictor's own decoding: colors (with runner-up), scores, and lazy full-size masks
    result = Segmentation({}, {}, size)
    SegGptPredictor._decode(rgb, GROUP, size, result)
    t3 = t4 = time.perf_counter()  # ours has no upsampling step: the RLE reads the model-sized map
    masks = {label_key("tag", label): result.masks[label] for label in LABELS}
    scores = {label_key("tag", label): result.scores[label] for label in LABELS}
    prediction = prediction_for(1, [CONTROL], masks, scores, "v")
    t5 = time.perf_counter()
    body = json.dumps(prediction)
    t6 = time.perf_counter()
    for name, a, b in (("decode", t0, t1), ("preprocess", t1, t2), ("color_decode", t2, t3), ("upsample", t3, t4), ("rle", t4, t5), ("json", t5, t6)):
        times.setdefault(name, []).append((b - a) * 1000)
    return {"bytes": len(body)}


def official_preprocess(image: Image.Image) -> np.ndarray:
    """What the official SegGPT code does: Pillow's bicubic resize, then (x / 255 - mean) / std."""
    resized = np.asarray(image.resize(SIZE[::-1], Image.BICUBIC), dtype=np.float32) / 255.0
    return ((resized - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)).transpose(2, 0, 1)


def naive(data: bytes, painted: torch.Tensor, palette: np.ndarray, times: dict) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    t0 = time.perf_counter()
    image = open_image(data)
    size = (image.height, image.width)
    t1 = time.perf_counter()
    official_preprocess(image)
    t2 = time.perf_counter()
    indices, confidence = decode_colors(denormalize(painted)[0], palette)
    t3 = time.perf_counter()
    masks = {}
    for value, label in enumerate(LABELS, start=1):  # one full-size resize per label
        small = Image.fromarray((indices == value).astype(np.uint8) * 255)
        masks[label] = np.asarray(small.resize((size[1], size[0]), Image.NEAREST))
    t4 = time.perf_counter()
    regions = [{"value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": [label]}} for label, mask in masks.items()]
    t5 = time.perf_counter()
    body = json.dumps({"result": regions})
    t6 = time.perf_counter()
    for name, a, b in (("decode", t0, t1), ("preprocess", t1, t2), ("color_decode", t2, t3), ("upsample", t3, t4), ("rle", t4, t5), ("json", t5, t6)):
        times.setdefault(name, []).append((b - a) * 1000)
    return {"bytes": len(body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, painted, palette = fixture()
    mine, theirs = {}, {}
    ours(data, painted, palette, {})
    naive(data, painted, palette, {})
    for _ in range(args.repeats):
        ours(data, painted, palette, mine)
        naive(data, painted, palette, theirs)
    print(f"1920x1080 JPEG ({len(data)} bytes), 3 labels, 1 thread, {args.repeats} repeats, medians in ms")
    print(f"{'step':14s} {'ours':>8s} {'naive':>8s}")
    for step in mine:
        print(f"{step:14s} {statistics.median(mine[step]):8.2f} {statistics.median(theirs[step]):8.2f}")
    total_ours = statistics.median([sum(v) for v in zip(*mine.values())])
    total_naive = statistics.median([sum(v) for v in zip(*theirs.values())])
    print(f"{'total':14s} {total_ours:8.2f} {total_naive:8.2f}")
    print(f"ratio={total_ours / total_naive:.3f}")


if __name__ == "__main__":
    main()
