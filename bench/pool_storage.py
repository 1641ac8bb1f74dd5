"""What the prompt pool stores per annotated image, against the previous rule, side by side in one run.

- baseline ("1024 long"): the rule before, at most 1024 px on the longer side, re-encoded in the source's format;
- now ("448 axes"): `backend.prompt_pool._bounded`, at most 448 px on each axis (the network's input, resized as the
  network resizes), the smaller of JPEG 90 (4:4:4) and PNG.

For each rule it prints the bytes Redis holds per entry (the bench/scale.py images: 640x480 to 1920x1080, JPEG and
PNG), how far the real SegGPT's input (the prompt resized to 448x448) moves from the original's, in levels of 255,
and the one-shot mIoU of the shipped small model with 1080p prompts stored each way (held-out appearance episodes).
The last line is `bytes_ratio=<now / baseline> input_error_levels=<now> miou_now_minus_original=<...>`.

    python bench/pool_storage.py [--images 40] [--episodes 200]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def baseline_bounded(data: bytes, image, masks: dict):
    """The previous rule, kept here as the named baseline."""
    from PIL import Image

    if max(image.size) <= 1024:
        return data, image, masks
    scale = 1024 / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.convert("RGB").resize(size, Image.BICUBIC)
    buffer = io.BytesIO()
    if data[:3] == b"\xff\xd8\xff":
        small.save(buffer, format="JPEG", quality=95)
    else:
        small.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), small, {k: np.asarray(Image.fromarray(m).resize(size, Image.NEAREST)) for k, m in masks.items()}


def model_input(data: bytes) -> np.ndarray:
    """The real SegGPT's view of an image file: 448x448, in levels of 255."""
    from seggpt_core.transforms import denormalize, image_to_tensor, open_image

    return denormalize(image_to_tensor(open_image(data), (448, 448))[None])[0]


def encode(image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **({"quality": 90} if kind == "JPEG" else {}))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=200)
    args = parser.parse_args()

    from PIL import Image

    from backend.prompt_pool import _bounded
    from scale import make_images
    from seggpt_core import Prompt, SegGptPredictor, load_model
    from seggpt_core.research.evaluation import HELD_OUT_SEED, iou, make_episodes
    from seggpt_core.transforms import open_image

    rules = {"1024 long": baseline_bounded, "448 axes": _bounded}
    _, images = make_images(args.images)
    print(f"-- {len(images)} bench/scale.py images; bytes per entry, and the 448x448 model input's error (levels of 255)")
    figures = {}
    for name, rule in rules.items():
        sizes, errors = [], []
        for item in images:
            stored, _, _ = rule(item["bytes"], open_image(item["bytes"]), {})
            sizes.append(len(stored))
            errors.append(np.abs(model_input(stored) - model_input(item["bytes"])).mean())
        figures[name] = (float(np.mean(sizes)), float(np.mean(errors)), float(np.max(errors)))
        print(f"{name:10s} {figures[name][0] / 1024:7.1f} KB/entry ({500 * figures[name][0] / 2**20:5.1f} MB for 500)  "
              f"input error mean {figures[name][1]:.3f}, worst image {figures[name][2]:.3f}")

    predictor = SegGptPredictor(load_model("tiny-appearance", device="cpu"))
    scores = {"original": [], **{name: [] for name in rules}}
    for index, episode in enumerate(make_episodes(args.episodes, size=(270, 480), first_seed=HELD_OUT_SEED + 3_000_000)):
        [scene], [target], [label] = episode.prompts, episode.targets, list(episode.categories)
        big = scene.image.resize((1920, 1080), Image.BICUBIC)
        data = encode(big, "JPEG" if index % 2 else "PNG")
        mask = np.asarray(Image.fromarray(scene.masks[label]).resize((1920, 1080), Image.NEAREST))
        variants = {"original": (data, mask)}
        for name, rule in rules.items():
            stored, _, masks = rule(data, open_image(data), {label: mask})
            variants[name] = (stored, masks[label])
        for name, (image, prompt_mask) in variants.items():
            predictor.set_prompts([Prompt(image, {label: prompt_mask})])
            [result] = predictor.predict([target.image])
            scores[name].append(iou(result.masks[label], target.masks[label]))
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    print(f"-- one-shot mIoU, tiny-appearance, {args.episodes} held-out episodes, 1920x1080 prompts (half JPEG, half PNG)")
    for name, value in means.items():
        print(f"{name:10s} {value:.4f}")
    print(f"bytes_ratio={figures['448 axes'][0] / figures['1024 long'][0]:.3f} input_error_levels={figures['448 axes'][1]:.3f} "
          f"miou_now_minus_original={means['448 axes'] - means['original']:+.4f}")


if __name__ == "__main__":
    main()
